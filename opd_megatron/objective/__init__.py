"""The on-policy distillation objective: advantages, policy and distillation losses, logprobs.

Pure torch (no Megatron or SGLang import), so every function is tested in milliseconds against
brute-force float64 references (tests/test_objective_*.py).

Shape suffixes: B batch rows, T positions (already shifted: logits[:, t] predicts
token_ids[:, t]), V vocabulary (the local shard under tensor parallelism), K teacher top-k.

What the learner and the loop call:
- ``compute_loss(objective, logits_BSV, batch, *, temperature=1.0, tp_group=None)`` takes the
  learner's UNSHIFTED logits and a ``TrainBatch``, does the shift itself and dispatches on
  ``objective.method`` / ``objective.kl_estimator`` (see its docstring for the exact terms).
- ``build_advantages(objective, mask_BT, *, sampler_logprobs_BT, teacher_logprobs_BT, rewards_B,
  group_ids_B)`` fills ``TrainBatch.advantages`` so that compute_loss applies every weight once.
- ``validate_objective(objective)`` raises ConfigError for contradictory settings (call it in
  config validation, before any process starts).
"""

from opd_megatron.objective.advantages import (
    combine_advantages,
    group_normalized_advantages,
    reverse_kl_advantages,
)
from opd_megatron.objective.divergence import full_vocab_divergence, topk_divergence
from opd_megatron.objective.logprobs import sampled_token_logprobs, vocab_stats
from opd_megatron.objective.losses import build_advantages, compute_loss, validate_objective
from opd_megatron.objective.policy import masked_mean, policy_loss, sft_loss

__all__ = [
    "build_advantages",
    "combine_advantages",
    "compute_loss",
    "full_vocab_divergence",
    "group_normalized_advantages",
    "masked_mean",
    "policy_loss",
    "reverse_kl_advantages",
    "sampled_token_logprobs",
    "sft_loss",
    "topk_divergence",
    "validate_objective",
    "vocab_stats",
]
