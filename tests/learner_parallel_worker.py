"""torchrun worker of tests/test_learner_parallel.py: trains the tiny model under TP=2, PP=2
and DP=2 (distributed optimizer) in turn, on 2 gloo ranks, and writes what the test compares.

    torchrun --nproc_per_node=2 tests/learner_parallel_worker.py MODEL_DIR OUT_DIR

For each layout: the 3 step losses and grad norms, the gathered HF weights after training
(rank 0, safetensors), a frozen teacher's logprobs and logits of one batch, the HF export
(PP=2), and for DP=2 a stop-at-step-1 / resume check (bit-identical weights).
Writes OUT_DIR/results.json on rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opd_megatron.config.schema import ModelConfig  # noqa: E402
from opd_megatron.learner import FrozenTeacher  # noqa: E402
from tests.learner_fixtures import (  # noqa: E402
    NUM_STEPS,
    make_batch,
    make_learner,
    parallel_config,
    train_steps,
)

LAYOUTS = {"tp2": dict(tp=2), "pp2": dict(pp=2), "dp2": dict(dp=2)}


def _reset_parallel() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()


def _weights_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _resume_check(model_dir: str, out: Path, parallel) -> bool:
    """Stop after step 1 and resume in a fresh learner == 3 uninterrupted steps (bitwise)."""
    first = make_learner(model_dir, parallel)
    train_steps(first, 1)
    first.save_checkpoint(out / "ckpt-dp2", {"cursor": 1})
    train_steps(first, NUM_STEPS - 1, first_step=1)
    straight = first.hf_state_dict()
    second = make_learner(model_dir, parallel)
    extra = second.load_checkpoint(out / "ckpt-dp2")
    train_steps(second, NUM_STEPS - 1, first_step=extra["cursor"])
    resumed = second.hf_state_dict()
    return dist.get_rank() != 0 or _weights_equal(straight, resumed)


def main(model_dir: str, out_dir: str) -> None:
    from safetensors.torch import save_file

    out = Path(out_dir)
    results: dict = {}
    for name, dims in LAYOUTS.items():
        _reset_parallel()
        parallel = parallel_config(**dims)
        learner = make_learner(model_dir, parallel)
        results[name] = train_steps(learner)
        weights = learner.hf_state_dict()
        if name == "pp2":
            learner.export_hf(out / "export-pp2")
        teacher = FrozenTeacher(ModelConfig(path=model_dir), parallel)
        scores = {"logprobs": teacher.logprobs(make_batch(9)), "logits": teacher.logits(make_batch(9))}
        del teacher
        if dist.get_rank() == 0:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"{name}.safetensors"))
            save_file(scores, str(out / f"{name}-teacher.safetensors"))
        if name == "dp2":
            results[name]["resume_bit_exact"] = _resume_check(model_dir, out, parallel)
        del learner
    if dist.get_rank() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
