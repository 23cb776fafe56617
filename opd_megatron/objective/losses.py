"""One entry point from an ObjectiveConfig and a TrainBatch to a loss, so the learner never
branches on the method: ``build_advantages`` (the loop, before packing) and ``compute_loss``
(the learner, on its logits) split every weight so that each is applied exactly once.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from opd_megatron.config.schema import CHOICES, ObjectiveConfig
from opd_megatron.methods import full_vocab_kl, method_of, sampled_token_kl
from opd_megatron.errors import ConfigError
from opd_megatron.objective.advantages import (
    combine_advantages,
    group_normalized_advantages,
    reverse_kl_advantages,
)
from opd_megatron.objective.divergence import topk_terms
from opd_megatron.objective.logprobs import _shard_info, sampled_token_logprobs, vocab_stats
from opd_megatron.objective.policy import masked_mean, policy_loss, sft_loss

_RANGES = {
    "kl_coef": (0.0, None), "reward_weight": (0.0, None), "discount": (0.0, 1.0),
    "jsd_beta": (0.0, 1.0), "clip_eps": (0.0, 0.999999),
}


def validate_objective(objective: ObjectiveConfig) -> None:
    """Raise ConfigError (one line: key and fix) for values the objective cannot run with."""
    for name, allowed in CHOICES.items():
        if name.startswith("objective."):
            value = getattr(objective, name.split(".", 1)[1])
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {list(allowed)}; pick one")
    for key, (low, high) in _RANGES.items():
        value = getattr(objective, key)
        if value < low or (high is not None and value > high):
            raise ConfigError(f"objective.{key}={value} must lie in [{low}, {high or 'inf'}]")
    for key in ("is_cap", "teacher_temperature"):
        if getattr(objective, key) <= 0:
            raise ConfigError(f"objective.{key}={getattr(objective, key)} must be > 0")
    method, weight = objective.method, objective.reward_weight
    if method_of(objective).uses_reward and weight <= 0:
        raise ConfigError(f"objective.method={method} needs objective.reward_weight > 0 "
                          f"(e.g. objective.reward_weight=1.0)")
    if not method_of(objective).uses_reward and weight != 0:
        raise ConfigError(f"objective.reward_weight={weight} is unused by method={method}; "
                          f"set objective.method=opd+reward or objective.reward_weight=0")


def build_advantages(objective: ObjectiveConfig, mask_BT: torch.Tensor, *,
                     sampler_logprobs_BT: Optional[torch.Tensor] = None,
                     teacher_logprobs_BT: Optional[torch.Tensor] = None,
                     rewards_B: Optional[torch.Tensor] = None,
                     group_ids_B: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, T] ``TrainBatch.advantages`` for this objective (elementwise; any alignment).

    - KL part, only for method opd / opd+reward with kl_estimator=sampled_token:
      ``reverse_kl_advantages(sampler, teacher, mask, coef=kl_coef, discount=discount)``.
      With kl_estimator=full_vocab the KL is a loss term in ``compute_loss`` instead.
    - Reward part, for rl / opd+reward: ``reward_weight * group_normalized_advantages``.
    - sft: zeros (unused).
    """
    kl_BT = torch.zeros(mask_BT.shape, dtype=torch.float32, device=mask_BT.device)
    if sampled_token_kl(objective):
        if sampler_logprobs_BT is None or teacher_logprobs_BT is None:
            raise ValueError("sampled-token OPD advantages need sampler and teacher logprobs")
        kl_BT = reverse_kl_advantages(sampler_logprobs_BT.float(), teacher_logprobs_BT.float(),
                                      mask_BT, coef=objective.kl_coef,
                                      discount=objective.discount)
    reward_B = torch.zeros(mask_BT.shape[0], dtype=torch.float32, device=mask_BT.device)
    if method_of(objective).uses_reward:
        if rewards_B is None or group_ids_B is None:
            raise ValueError(f"method={objective.method} needs rewards and group ids")
        reward_B = group_normalized_advantages(rewards_B.float(), group_ids_B)
    weight = objective.reward_weight if method_of(objective).uses_reward else 0.0
    return combine_advantages(kl_BT, reward_B, mask_BT, kl_weight=1.0, reward_weight=weight)


def _policy_kwargs(objective: ObjectiveConfig) -> Dict:
    return dict(correction=objective.is_correction, is_cap=objective.is_cap,
                clip_eps=objective.clip_eps, norm=objective.loss_norm)


def _full_vocab_loss(objective, logits_BTV, tokens_BT, topk_ids_BTK, topk_lp_BTK, sampler_BT,
                     advantages_BT, mask_BT, temperature, tp_group, chunk_size):
    num_topk = topk_ids_BTK.shape[-1]
    _, vocab = _shard_info(logits_BTV.shape[-1], tp_group)
    ids_BTK = torch.cat([topk_ids_BTK.long(), tokens_BT.long().unsqueeze(-1)], dim=-1)
    stats = vocab_stats(logits_BTV, ids_BTK, temperature=temperature, chunk_size=chunk_size,
                        tp_group=tp_group, num_excluded=num_topk if num_topk < vocab else 0)
    learner_BT = stats.picked_BTK[..., num_topk] - stats.lse_BT
    terms_BT, teacher_tail_BT, student_tail_BT = topk_terms(
        stats, topk_lp_BTK, objective.divergence, objective.jsd_beta)
    kl_loss = masked_mean(terms_BT, mask_BT, objective.loss_norm)
    pg_loss, metrics = policy_loss(learner_BT, sampler_BT, advantages_BT, mask_BT,
                                   **_policy_kwargs(objective))
    loss = objective.kl_coef * kl_loss
    if method_of(objective).uses_reward:
        loss = loss + pg_loss
    on = mask_BT.bool()
    metrics.update(
        pg_loss=metrics.pop("loss"), kl_loss=float(kl_loss.detach()),
        teacher_tail_mass=float(teacher_tail_BT[on].mean()) if on.any() else 0.0,
        student_tail_mass=float(student_tail_BT[on].mean()) if on.any() else 0.0)
    return loss, metrics


def compute_loss(objective: ObjectiveConfig, logits_BSV: torch.Tensor, batch, *,
                 temperature: float = 1.0, tp_group=None, chunk_size: Optional[int] = None
                 ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Loss and float metrics of one (micro)batch from the learner's UNSHIFTED logits.

    logits_BSV: [B, S, V] learner logits (local vocab shard under ``tp_group``), where
    ``logits[:, s]`` predicts ``token_ids[:, s + 1]``. The shift is done here:
    ``logits[:, :-1]`` is scored against ``token_ids[:, 1:]`` and every [B, S] batch tensor
    (response_mask, sampler_logprobs, advantages, teacher_topk_*) is used as ``[:, 1:]``.
    ``temperature``: the sampling temperature; learner logprobs and the student distribution
    of the divergence are both ``softmax(logits / temperature)``.

    Terms (norm = objective.loss_norm over response tokens):
    - sft: ``sft_loss`` (token NLL of the teacher samples).
    - opd / rl / opd+reward with kl_estimator=sampled_token: ``policy_loss`` on
      ``batch.advantages`` (which ``build_advantages`` filled with the KL and/or reward terms,
      already weighted) with objective.is_correction / is_cap / clip_eps.
    - opd / opd+reward with kl_estimator=full_vocab: ``kl_coef * divergence`` where divergence
      is ``topk_divergence``'s value (objective.divergence, jsd_beta) against
      ``batch.teacher_topk_ids / teacher_topk_logprobs`` (K = V: exact); for opd+reward plus
      ``policy_loss`` on ``batch.advantages`` (the reward term, weighted by build_advantages).
      For opd the policy term is not added; its mismatch and ratio metrics are still reported.
    Metrics: loss plus those of policy_loss (its loss as pg_loss) or sft_loss, and for
    full_vocab kl_loss and teacher/student_tail_mass.
    """
    logits_BTV = logits_BSV[:, :-1]
    tokens_BT = batch.token_ids[:, 1:]
    mask_BT = batch.response_mask[:, 1:]
    if not method_of(objective).on_policy:
        learner_BT = sampled_token_logprobs(logits_BTV, tokens_BT, temperature=temperature,
                                            chunk_size=chunk_size, tp_group=tp_group)
        return sft_loss(learner_BT, mask_BT, norm=objective.loss_norm)
    sampler_BT = batch.sampler_logprobs[:, 1:]
    advantages_BT = batch.advantages[:, 1:]
    if full_vocab_kl(objective):
        if batch.teacher_topk_ids is None or batch.teacher_topk_logprobs is None:
            raise ValueError("kl_estimator=full_vocab needs batch.teacher_topk_ids/logprobs "
                             "(K = vocab size for the exact full-vocabulary KL)")
        loss, metrics = _full_vocab_loss(
            objective, logits_BTV, tokens_BT, batch.teacher_topk_ids[:, 1:],
            batch.teacher_topk_logprobs[:, 1:], sampler_BT, advantages_BT, mask_BT,
            temperature, tp_group, chunk_size)
        metrics["loss"] = float(loss.detach())
        return loss, metrics
    learner_BT = sampled_token_logprobs(logits_BTV, tokens_BT, temperature=temperature,
                                        chunk_size=chunk_size, tp_group=tp_group)
    return policy_loss(learner_BT, sampler_BT, advantages_BT, mask_BT,
                       **_policy_kwargs(objective))
