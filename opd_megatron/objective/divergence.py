"""Full-distribution distillation losses: forward KL, reverse KL and generalized JSD(beta).

Two sources of the teacher distribution:
- ``topk_divergence``: the teacher's top-k ids and logprobs per position (what an inference
  server returns). The divergence is taken over K + 1 categories: the K teacher top-k tokens and
  one "tail" bucket holding all other tokens. Teacher tail mass ``1 - sum_k p_k`` (clamped at 0,
  logged with a floor so reverse KL stays finite where the teacher's top-k covers all its mass);
  student tail mass from the logsumexp of the student's logits with the top-k removed (exact, not
  ``1 - sum``, so a tiny tail keeps its relative precision). Merging the tail into one bucket
  can only lower a divergence (data processing), so the value is a lower bound of the full-vocab
  one; with K = V (ids a permutation of the vocabulary) there is no tail and the value is exact.
- ``full_vocab_divergence``: full teacher logits, exact, chunked over T with recomputation.

Direction names follow the distillation literature: forward KL is KL(teacher || student) (mass
covering, what SFT minimises), reverse KL is KL(student || teacher) (mode seeking, what OPD
minimises). JSD(beta) with mixture ``m = beta * p_teacher + (1 - beta) * q_student`` is
``beta * KL(p || m) + (1 - beta) * KL(q || m)``; beta = 0 and 1 are taken as forward and
reverse KL themselves (the mixture formula vanishes there), as in GKD.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from opd_megatron.objective.logprobs import CHUNK_ELEMENTS, VocabStats, _shard_info, vocab_stats
from opd_megatron.objective.policy import masked_mean

KINDS = ("reverse_kl", "forward_kl", "jsd")
TAIL_FLOOR = 1e-8
"""Smallest teacher tail mass used inside a log: below it, fp32 top-k logprobs cannot say how
much mass is left (sum-of-K rounding is ~K * 1e-7), so smaller values are treated as this."""


def _check_kind(kind: str, beta: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must lie in [0, 1], got {beta}")


def divergence_terms(student_logprobs_BTC: torch.Tensor, teacher_logprobs_BTC: torch.Tensor,
                     kind: str, beta: float = 0.5) -> torch.Tensor:
    """[B, T] divergence between two distributions given as log-probs over C categories."""
    lq, lp = student_logprobs_BTC, teacher_logprobs_BTC
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        return (lp.exp() * (lp - lq)).sum(-1)
    if kind == "reverse_kl":
        return (lq.exp() * (lq - lp)).sum(-1)
    if kind == "jsd":
        lm = torch.logaddexp(lp + math.log(beta), lq + math.log(1.0 - beta))
        return (beta * (lp.exp() * (lp - lm)).sum(-1)
                + (1.0 - beta) * (lq.exp() * (lq - lm)).sum(-1))
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate near both ends (Maechler 2012)."""
    a = a.clamp(max=0.0)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)),
                       torch.log1p(-torch.exp(a)))


def topk_terms(stats: VocabStats, teacher_topk_logprobs_BTK: torch.Tensor, kind: str,
               beta: float, tail_floor: float = TAIL_FLOOR
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token divergence over the top-k (+ tail) categories from one ``vocab_stats`` pass.

    ``stats.picked_BTK[..., :K]`` must be the student logits at the teacher's top-k ids and
    ``stats.tail_lse_BT`` the logsumexp without them (None: no tail, K = V).
    Returns ([B, T] divergence, [B, T] teacher tail mass, [B, T] student tail mass).
    """
    num_topk = teacher_topk_logprobs_BTK.shape[-1]
    lse = stats.lse_BT.unsqueeze(-1)
    student_BTC = stats.picked_BTK[..., :num_topk] - lse
    teacher_BTC = teacher_topk_logprobs_BTK.detach().to(student_BTC.dtype)
    if stats.tail_lse_BT is None:
        zeros = torch.zeros_like(stats.lse_BT)
        return divergence_terms(student_BTC, teacher_BTC, kind, beta), zeros, zeros.detach()
    teacher_tail_BT = _log1mexp(torch.logsumexp(teacher_BTC, dim=-1))
    teacher_tail_BT = teacher_tail_BT.clamp(min=math.log(tail_floor))
    student_tail_BT = stats.tail_lse_BT - stats.lse_BT
    student_BTC = torch.cat([student_BTC, student_tail_BT.unsqueeze(-1)], dim=-1)
    teacher_BTC = torch.cat([teacher_BTC, teacher_tail_BT.unsqueeze(-1)], dim=-1)
    return (divergence_terms(student_BTC, teacher_BTC, kind, beta), teacher_tail_BT.exp(),
            student_tail_BT.detach().exp())


def _metrics(loss, terms_BT, teacher_tail_BT, student_tail_BT, mask) -> Dict[str, float]:
    on = mask.bool()
    num = int(on.sum())
    mean = (lambda x: float(x.detach()[on].mean()) if num else 0.0)
    return {"loss": float(loss.detach()), "divergence": mean(terms_BT), "num_tokens": float(num),
            "teacher_tail_mass": mean(teacher_tail_BT), "student_tail_mass": mean(student_tail_BT)}


def topk_divergence(student_logits: torch.Tensor, teacher_topk_ids: torch.Tensor,
                    teacher_topk_logprobs: torch.Tensor, mask: torch.Tensor, *,
                    kind: str = "reverse_kl", beta: float = 0.5, temperature: float = 1.0,
                    norm: str = "token_mean", tp_group=None, chunk_size: Optional[int] = None,
                    tail_floor: float = TAIL_FLOOR) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Divergence between the student and the teacher's top-k distribution, per position.

    student_logits [B, T, V] (local shard under ``tp_group``; the student distribution is
    ``softmax(logits / temperature)``), teacher_topk_ids [B, T, K] global ids,
    teacher_topk_logprobs [B, T, K] at the teacher's own temperature, mask [B, T].
    Loss: ``masked_mean(divergence_BT, mask, norm)``; see the module docstring for the tail
    bucket and K = V. Metrics: loss, divergence, num_tokens, teacher/student_tail_mass.
    K = V means K equals the (global) logits width: a learner whose vocabulary is padded
    (Megatron pads to a multiple of 128 * tp) and a teacher giving all real ids has K < V, so
    the padding ids form the tail bucket and the student's mass there is pushed towards 0.
    """
    _check_kind(kind, beta)
    if teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise ValueError(f"teacher_topk_ids {tuple(teacher_topk_ids.shape)} and "
                         f"teacher_topk_logprobs {tuple(teacher_topk_logprobs.shape)} must match")
    num_topk = teacher_topk_ids.shape[-1]
    _, vocab = _shard_info(student_logits.shape[-1], tp_group)
    stats = vocab_stats(student_logits, teacher_topk_ids, temperature=temperature,
                        chunk_size=chunk_size, tp_group=tp_group,
                        num_excluded=num_topk if num_topk < vocab else 0)
    terms_BT, teacher_tail, student_tail = topk_terms(stats, teacher_topk_logprobs, kind, beta,
                                                      tail_floor)
    loss = masked_mean(terms_BT, mask, norm)
    return loss, _metrics(loss, terms_BT, teacher_tail, student_tail, mask)


def full_vocab_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          mask: torch.Tensor, *, kind: str = "reverse_kl", beta: float = 0.5,
                          norm: str = "token_mean", temperature: float = 1.0,
                          teacher_temperature: float = 1.0, chunk_size: Optional[int] = None
                          ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Exact divergence between ``softmax(student / temperature)`` and
    ``softmax(teacher / teacher_temperature)``, both [B, T, V] (unsharded), teacher detached.

    Chunked over T; under autograd each chunk is recomputed in backward (activation
    checkpointing), so no fp32 [B, T, V] is kept. Metrics as ``topk_divergence`` (tails 0).
    """
    _check_kind(kind, beta)
    if student_logits.shape != teacher_logits.shape or mask.shape != student_logits.shape[:2]:
        raise ValueError(f"student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)} and mask {tuple(mask.shape)} disagree")
    cdtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    num_rows, num_pos, vocab = student_logits.shape
    step = chunk_size or max(1, CHUNK_ELEMENTS // max(1, num_rows * vocab))

    def chunk_terms(student_chunk, teacher_chunk):
        lq = torch.log_softmax(student_chunk.to(cdtype) / temperature, dim=-1)
        lp = torch.log_softmax(teacher_chunk.to(cdtype) / teacher_temperature, dim=-1)
        return divergence_terms(lq, lp, kind, beta)

    pieces = []
    for t0 in range(0, num_pos, step):
        s, t = student_logits[:, t0:t0 + step], teacher_logits[:, t0:t0 + step].detach()
        if s.requires_grad and torch.is_grad_enabled():
            pieces.append(checkpoint(chunk_terms, s, t, use_reentrant=False))
        else:
            pieces.append(chunk_terms(s, t))
    terms_BT = torch.cat(pieces, dim=1) if pieces else student_logits.new_zeros(num_rows, 0)
    loss = masked_mean(terms_BT, mask, norm)
    zeros = torch.zeros_like(terms_BT)
    return loss, _metrics(loss, terms_BT, zeros, zeros, mask)
