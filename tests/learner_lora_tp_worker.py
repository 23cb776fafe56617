"""torchrun worker of tests/test_learner_lora.py: LoRA training under TP=2 on 2 gloo ranks.

    torchrun --nproc_per_node=2 tests/learner_lora_tp_worker.py MODEL_DIR OUT_DIR

Writes OUT_DIR/results.json (step losses and grad norms) and OUT_DIR/tp2.safetensors (the
merged HF weights after training) on rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.learner_fixtures import train_steps  # noqa: E402
from tests.test_learner_lora import lora_learner  # noqa: E402


def main(model_dir: str, out_dir: str) -> None:
    from safetensors.torch import save_file

    out = Path(out_dir)
    learner = lora_learner(model_dir, tp=2)
    metrics = train_steps(learner)
    weights = learner.hf_state_dict()
    if dist.get_rank() == 0:
        save_file(weights, str(out / "tp2.safetensors"))
        (out / "results.json").write_text(json.dumps(metrics))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
