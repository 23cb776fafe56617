"""Rollouts -> a packed learner batch with advantages (the glue between engines and learner).

All per-token tensors are [B, S] aligned with ``token_ids`` (see opd_megatron.types): the
response token t of row b sits at position ``len(prompt_b) + t``. The advantage math itself is
in opd_megatron.objective; this module only places numbers at the right positions.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from opd_megatron import objective as obj
from opd_megatron.config.schema import ObjectiveConfig
from opd_megatron.methods import sampled_token_kl
from opd_megatron.types import Rollout, TrainBatch


def pack_rollouts(rollouts: List[Rollout], pad_id: int, *, with_topk: bool = False) -> TrainBatch:
    """Right-pad prompt+response rows into a TrainBatch (advantages zero; see add_advantages)."""
    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    B, S = len(seqs), max(len(s) for s in seqs)
    token_ids = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros(B, S)
    sampler = torch.zeros(B, S)
    teacher = torch.zeros(B, S) if all(r.teacher_logprobs is not None for r in rollouts) else None
    K = len(rollouts[0].teacher_topk_ids[0]) if with_topk and rollouts[0].response_ids else 0
    topk_ids = torch.zeros(B, S, K, dtype=torch.long) if with_topk else None
    topk_lp = torch.full((B, S, K), -1e4) if with_topk else None
    for b, r in enumerate(rollouts):
        P, T = len(r.prompt_ids), len(r.response_ids)
        token_ids[b, : P + T] = torch.tensor(seqs[b])
        mask[b, P : P + T] = 1.0
        sampler[b, P : P + T] = torch.tensor(r.sampler_logprobs, dtype=torch.float32)
        if teacher is not None:
            teacher[b, P : P + T] = torch.tensor(r.teacher_logprobs, dtype=torch.float32)
        if with_topk and T:
            topk_ids[b, P : P + T] = torch.tensor(r.teacher_topk_ids)  # type: ignore[index]
            topk_lp[b, P : P + T] = torch.tensor(r.teacher_topk_logprobs, dtype=torch.float32)  # type: ignore[index]
    return TrainBatch(token_ids=token_ids, response_mask=mask, sampler_logprobs=sampler,
                      advantages=torch.zeros(B, S),
                      group_ids=torch.tensor([r.group_id for r in rollouts], dtype=torch.long),
                      teacher_logprobs=teacher, teacher_topk_ids=topk_ids,
                      teacher_topk_logprobs=topk_lp)


def add_advantages(batch: TrainBatch, rollouts: List[Rollout], objective: ObjectiveConfig,
                   student_logprobs_BT: Optional[torch.Tensor] = None) -> TrainBatch:
    """Fill batch.advantages (reverse-KL term and/or group-normalised reward, per the method).
    ``student_logprobs_BT`` (objective.kl_at=learner) replaces the sampler's logprobs in the KL
    term; the importance ratio always uses the sampler's."""
    needs_kl = sampled_token_kl(objective)
    student = batch.sampler_logprobs if student_logprobs_BT is None else student_logprobs_BT
    batch.advantages = obj.build_advantages(
        objective, batch.response_mask, sampler_logprobs_BT=student,
        teacher_logprobs_BT=batch.teacher_logprobs if needs_kl else None,
        rewards_B=torch.tensor([r.reward or 0.0 for r in rollouts], dtype=torch.float32),
        group_ids_B=batch.group_ids)
    return batch


def response_lengths(rollouts: Sequence[Rollout]) -> Dict[str, float]:
    """Mean response length (tokens) and the share of responses cut at ``max_new_tokens``
    (finish reason "length"): a run whose answers are cut off scores them as wrong."""
    if not rollouts:
        return {}
    return {"response_len_mean": sum(len(r.response_ids) for r in rollouts) / len(rollouts),
            "truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts)}


def sampled_reverse_kl(batch: TrainBatch) -> Optional[float]:
    """Mean over response tokens of logp_sampler - logp_teacher (the per-token reverse KL estimate)."""
    if batch.teacher_logprobs is None or batch.num_tokens == 0:
        return None
    diff = (batch.sampler_logprobs - batch.teacher_logprobs) * batch.response_mask
    return float(diff.sum() / batch.response_mask.sum())
