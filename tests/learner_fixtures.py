"""Shared pieces of the learner tests: tiny HF checkpoints, a deterministic OPD batch and the
configs every parallel layout trains with (the in-process baseline and the torchrun worker
must build exactly the same run)."""

from __future__ import annotations

from pathlib import Path

import torch

from opd_megatron.config.schema import ModelConfig, ObjectiveConfig, OptimConfig, ParallelConfig
from opd_megatron.models.tiny import TinyShape, save_random_model
from opd_megatron.types import TrainBatch

# GQA (4 query heads over 2 KV groups, so TP=2 splits whole groups), 2 layers (PP=2 splits
# them), kept small so three optimizer steps take well under a second.
TIED_SHAPE = TinyShape(hidden_size=64, num_layers=2, intermediate_size=128, num_heads=4,
                       num_kv_heads=2, head_dim=16, tie_word_embeddings=True)
UNTIED_SHAPE = TinyShape(hidden_size=64, num_layers=2, intermediate_size=128, num_heads=4,
                         num_kv_heads=2, head_dim=16, tie_word_embeddings=False)

NUM_STEPS = 3
SAMPLING_TEMPERATURE = 0.7
OBJECTIVE = ObjectiveConfig(method="opd", kl_estimator="sampled_token",
                            is_correction="truncated", loss_norm="token_mean")
OPTIM = OptimConfig(lr=2e-3, warmup_steps=1, schedule="cosine", min_lr=1e-4, grad_clip=1.0,
                    weight_decay=0.01)
MICROBATCH_TOKENS = 48
"""Budget giving 2 microbatches of 2 rows per DP rank at DP=2 (4 at DP=1) on ``make_batch``."""


def make_models(root: Path) -> dict:
    root = Path(root)
    return {"tied": str(save_random_model(root / "tied", TIED_SHAPE, seed=11)),
            "untied": str(save_random_model(root / "untied", UNTIED_SHAPE, seed=12))}


def make_batch(step: int, num_rows: int = 8, seq_len: int = 24, vocab: int = 21) -> TrainBatch:
    """A right-padded OPD batch with ragged prompts/responses; different per step."""
    gen = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(3, vocab, (num_rows, seq_len), generator=gen)
    mask = torch.zeros(num_rows, seq_len)
    for b in range(num_rows):
        prompt = 3 + b % 4
        end = seq_len - (b * 3) % 7
        mask[b, prompt:end] = 1.0
        tokens[b, end:] = 0  # pad id
    sampler = (-torch.rand(num_rows, seq_len, generator=gen) * 3.0) * mask
    advantages = torch.randn(num_rows, seq_len, generator=gen) * mask
    return TrainBatch(token_ids=tokens, response_mask=mask, sampler_logprobs=sampler,
                      advantages=advantages,
                      group_ids=torch.arange(num_rows, dtype=torch.long) // 2)


def parallel_config(tp: int = 1, pp: int = 1, dp: int = 1,
                    distributed_optimizer: bool = True) -> ParallelConfig:
    return ParallelConfig(tp=tp, pp=pp, dp=dp, microbatch_tokens=MICROBATCH_TOKENS,
                          distributed_optimizer=distributed_optimizer)


def make_learner(model_dir: str, parallel: ParallelConfig, seed: int = 5):
    from opd_megatron.learner import Learner

    return Learner(ModelConfig(path=model_dir), OBJECTIVE, OPTIM, parallel,
                   num_steps=NUM_STEPS, seed=seed, sampling_temperature=SAMPLING_TEMPERATURE)


def train_steps(learner, num_steps: int = NUM_STEPS, first_step: int = 0) -> dict:
    """{'losses': [...], 'grad_norms': [...]} of ``num_steps`` steps on make_batch(step).

    Grad norms are compared too: Adam hides a wrong gradient scale from the losses."""
    metrics = [learner.train_step(make_batch(first_step + i)) for i in range(num_steps)]
    return {"losses": [m["loss"] for m in metrics],
            "grad_norms": [m["grad_norm"] for m in metrics]}
