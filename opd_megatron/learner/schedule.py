"""Learning rate as a pure function of the step: linear warmup, then constant or cosine.

A function of (step, config) rather than a stateful scheduler object, so a checkpoint only
needs the step count and a resumed run gets exactly the same rates.
"""

from __future__ import annotations

import math

from opd_megatron.config.schema import OptimConfig


def lr_at(step: int, optim: OptimConfig, num_steps: int) -> float:
    """Rate for optimizer step ``step`` (0-based: the first update uses ``lr_at(0)``).

    Warmup ramps linearly from lr/warmup_steps to lr over ``warmup_steps`` updates (never 0,
    so the first step moves); cosine then decays from lr to min_lr at ``num_steps``."""
    warmup = max(0, optim.warmup_steps)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    if optim.schedule == "constant":
        return optim.lr
    decay_steps = max(1, num_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))
