"""The Megatron-Core learner: Qwen3 GPTModels, HF <-> Megatron conversion, training step,
frozen teacher and checkpoints (gloo on CPU, NCCL on GPU).

Heavy imports (Megatron, transformers) happen only when these names are used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Learner", "FrozenTeacher", "QWEN3_SHAPES"]


def __getattr__(name: str) -> Any:
    if name == "Learner":
        from opd_megatron.learner.learner import Learner

        return Learner
    if name == "FrozenTeacher":
        from opd_megatron.learner.teacher import FrozenTeacher

        return FrozenTeacher
    if name == "QWEN3_SHAPES":
        from opd_megatron.learner.qwen3 import QWEN3_SHAPES

        return QWEN3_SHAPES
    raise AttributeError(name)
