"""torchrun worker of tests/test_learner_lora.py: LoRA training under TP=2, then PP=2, on 2
gloo ranks.

    torchrun --nproc_per_node=2 tests/learner_lora_parallel_worker.py MODEL_DIR OUT_DIR

Writes, on rank 0, OUT_DIR/results.json (per layout: step losses and grad norms) and
OUT_DIR/<layout>.safetensors (the merged HF weights after training).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.learner_fixtures import train_steps  # noqa: E402
from tests.test_learner_lora import LORA_LAYOUTS, lora_learner  # noqa: E402


def main(model_dir: str, out_dir: str) -> None:
    from megatron.core import parallel_state
    from safetensors.torch import save_file

    out = Path(out_dir)
    results = {}
    for name, dims in LORA_LAYOUTS.items():
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        learner = lora_learner(model_dir, **dims)
        results[name] = train_steps(learner)
        weights = learner.hf_state_dict()
        if dist.get_rank() == 0:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"{name}.safetensors"))
        del learner
    if dist.get_rank() == 0:
        (out / "results.json").write_text(json.dumps(results))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
