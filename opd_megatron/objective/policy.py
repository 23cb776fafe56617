"""The importance-sampled policy-gradient loss and the SFT (token NLL) loss.

The sampler (SGLang) and the learner (Megatron) compute logprobs with different kernels and,
off-policy by one step, different weights; ``ratio = exp(learner - sampler)`` corrects for it.
Users hit collapse when that mismatch grows unnoticed, so every call reports it.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

NORMS = ("token_mean", "seq_mean")
CORRECTIONS = ("plain", "truncated", "ppo_clip")


def masked_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor, norm: str = "token_mean"
                ) -> torch.Tensor:
    """Scalar mean of ``values_BT`` over masked entries.

    token_mean: ``sum(mask * v) / sum(mask)`` over the whole batch (long responses weigh more);
    seq_mean: the mean over rows that have a masked token of each row's token mean (every
    sequence weighs the same). An all-zero mask gives 0 (still connected to the graph).
    """
    if values_BT.shape != mask_BT.shape:
        raise ValueError(f"values {tuple(values_BT.shape)} and mask {tuple(mask_BT.shape)} "
                         f"must match")
    mask_f = mask_BT.to(values_BT.dtype)
    masked = values_BT * mask_f
    if norm == "token_mean":
        return masked.sum() / mask_f.sum().clamp(min=1.0)
    if norm == "seq_mean":
        tokens_B = mask_f.sum(-1)
        row_means_B = masked.sum(-1) / tokens_B.clamp(min=1.0)
        return row_means_B.sum() / (tokens_B > 0).sum().clamp(min=1).to(values_BT.dtype)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _surrogate_BT(ratio_BT, advantages_BT, correction, is_cap, clip_eps):
    """Per-token objective to maximise; its gradient is the (corrected) policy gradient."""
    if correction == "plain":
        return ratio_BT * advantages_BT
    if correction == "truncated":
        # Value min(ratio, cap) * A, gradient min(ratio, cap) * A * grad(logp): the weight is
        # truncated but the token keeps its gradient (unlike a clamp, which would zero it).
        weight_BT = (ratio_BT.clamp(max=is_cap) / ratio_BT).detach()
        return ratio_BT * weight_BT * advantages_BT
    if correction == "ppo_clip":
        clipped_BT = ratio_BT.clamp(1.0 - clip_eps, 1.0 + clip_eps)
        return torch.minimum(ratio_BT * advantages_BT, clipped_BT * advantages_BT)
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def _mean_over(values_BT: torch.Tensor, mask_b: torch.Tensor, empty: float) -> float:
    selected = values_BT[mask_b]
    return float(selected.mean()) if selected.numel() else empty


def policy_loss(learner_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor, *, correction: str = "truncated",
                is_cap: float = 2.0, clip_eps: float = 0.2, norm: str = "token_mean"
                ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Importance-sampled policy gradient, ``-masked_mean(surrogate)`` with all inputs [B, T].

    ``ratio = exp(learner_logprobs - sampler_logprobs)`` (sampler and advantages detached).
    correction: plain ``ratio * A``; truncated ``min(ratio, is_cap)`` as a detached weight (the
    gradient is ``min(ratio, cap) * A * grad logp``); ppo_clip
    ``min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)``. norm: see ``masked_mean``.

    Metrics: loss, num_tokens, advantage_mean, ratio_mean/min/max, mismatch_abs
    (mean |learner - sampler|), mismatch_kl (k3 estimate of KL(sampler || learner):
    mean of ratio - 1 - log ratio), capped_frac (ratio > is_cap), clipped_frac (ppo).
    """
    if not learner_logprobs.shape == sampler_logprobs.shape == advantages.shape == mask.shape:
        raise ValueError("learner_logprobs, sampler_logprobs, advantages and mask must all be "
                         f"[B, T]; got {tuple(learner_logprobs.shape)}, "
                         f"{tuple(sampler_logprobs.shape)}, {tuple(advantages.shape)}, "
                         f"{tuple(mask.shape)}")
    if is_cap <= 0 or not 0 <= clip_eps < 1:
        raise ValueError(f"need is_cap > 0 and 0 <= clip_eps < 1; got {is_cap}, {clip_eps}")
    dtype = learner_logprobs.dtype
    log_ratio_BT = learner_logprobs - sampler_logprobs.detach().to(dtype)
    # Off the mask the logprobs are padding: zero the log ratio there so exp cannot overflow.
    log_ratio_BT = torch.where(mask.bool(), log_ratio_BT, torch.zeros_like(log_ratio_BT))
    ratio_BT = torch.exp(log_ratio_BT)
    surrogate_BT = _surrogate_BT(ratio_BT, advantages.detach().to(dtype), correction, is_cap,
                                 clip_eps)
    loss = -masked_mean(surrogate_BT, mask, norm)
    with torch.no_grad():
        on_b = mask.bool()
        ratio, log_ratio = ratio_BT.detach(), log_ratio_BT.detach()
        has = bool(on_b.any())
        metrics = {
            "loss": float(loss.detach()),
            "num_tokens": float(on_b.sum()),
            "advantage_mean": _mean_over(advantages.detach(), on_b, 0.0),
            "ratio_mean": _mean_over(ratio, on_b, 1.0),
            "ratio_min": float(ratio[on_b].min()) if has else 1.0,
            "ratio_max": float(ratio[on_b].max()) if has else 1.0,
            "mismatch_abs": _mean_over(log_ratio.abs(), on_b, 0.0),
            "mismatch_kl": _mean_over(ratio - 1.0 - log_ratio, on_b, 0.0),
            "capped_frac": _mean_over((ratio > is_cap).to(dtype), on_b, 0.0),
            "clipped_frac": _mean_over(((ratio - 1.0).abs() > clip_eps).to(dtype), on_b, 0.0),
        }
    return loss, metrics


def sft_loss(learner_logprobs: torch.Tensor, mask: torch.Tensor, *, norm: str = "token_mean"
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Token NLL ``-masked_mean(learner_logprobs)`` on teacher samples (off-policy distillation).

    Same [B, T] inputs as ``policy_loss``; metrics: loss (the NLL in nats/token), num_tokens.
    """
    loss = -masked_mean(learner_logprobs, mask, norm)
    return loss, {"loss": float(loss.detach()), "num_tokens": float(mask.bool().sum())}
