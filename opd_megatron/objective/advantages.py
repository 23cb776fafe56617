"""Per-token advantages: the sampled-token reverse-KL signal of OPD and GRPO's group reward.

OPD, RL and OPD+reward share one code path: each builds a [B, T] advantage that the same
importance-sampled policy loss consumes (``combine_advantages`` mixes the two signals).
"""

from __future__ import annotations

import torch


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes must match: {shapes}")


def reverse_kl_advantages(sampler_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor,
                          mask: torch.Tensor, *, coef: float = 1.0,
                          discount: float = 0.0) -> torch.Tensor:
    """[B, T] OPD advantages from [B, T] per-token logprobs of the sampled tokens.

    Per-token term ``r_t = -coef * (sampler_logprob_t - teacher_logprob_t)`` on masked
    (response) tokens: its expectation under the sampler is minus the per-position reverse KL,
    so raising it lowers KL(student || teacher). With ``discount`` gamma > 0 each token also
    gets the discounted future terms, ``A_t = sum_{u >= t} gamma^(u - t) r_u`` (u over positions;
    masked positions contribute 0 and receive 0). gamma = 0 (default): ``A_t = r_t``, the TML
    recipe. Returned detached: an advantage is a constant for the policy gradient.
    """
    _check_same_shape(sampler_logprobs=sampler_logprobs, teacher_logprobs=teacher_logprobs,
                      mask=mask)
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must lie in [0, 1], got {discount}")
    mask_f = mask.to(sampler_logprobs.dtype)
    terms_BT = -coef * (sampler_logprobs.detach() - teacher_logprobs.detach()) * mask_f
    if discount == 0.0:
        return terms_BT
    advantages_BT = torch.zeros_like(terms_BT)
    running_B = torch.zeros_like(terms_BT[:, 0])
    for t in range(terms_BT.shape[1] - 1, -1, -1):
        running_B = terms_BT[:, t] + discount * running_B
        advantages_BT[:, t] = running_B
    return advantages_BT * mask_f


def group_normalized_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *,
                                eps: float = 1e-6) -> torch.Tensor:
    """[B] GRPO advantages: ``(r - mean_g) / (std_g + eps)`` within each prompt's group.

    ``std_g`` is the population standard deviation (correction 0), so a group of one sample, or
    a group whose samples all got the same reward, has advantage 0: it carries no signal about
    which sample was better.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be [B]; got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    rewards = rewards.detach().to(torch.float64 if rewards.dtype == torch.float64
                                  else torch.float32)
    _, group_index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    def per_group_sum(values_B: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
        return zeros.index_add_(0, group_index, values_B)

    counts = per_group_sum(torch.ones_like(rewards))
    centred = rewards - (per_group_sum(rewards) / counts)[group_index]
    variances = per_group_sum(centred * centred) / counts
    return centred / (variances.sqrt()[group_index] + eps)


def combine_advantages(kl_advantages: torch.Tensor, reward_advantages: torch.Tensor,
                       mask: torch.Tensor, *, kl_weight: float,
                       reward_weight: float) -> torch.Tensor:
    """[B, T] ``mask * (kl_weight * kl_advantages + reward_weight * reward_advantages[:, None])``.

    The sequence-level reward advantage [B] is broadcast to every response token of its row.
    kl_weight 1, reward_weight 0 is OPD; 0 and 1 is RL (GRPO); both > 0 is OPD+reward.
    """
    _check_same_shape(kl_advantages=kl_advantages, mask=mask)
    if reward_advantages.shape != kl_advantages.shape[:1]:
        raise ValueError(f"reward_advantages must be [B] = [{kl_advantages.shape[0]}], got "
                         f"{tuple(reward_advantages.shape)}")
    mixed = kl_weight * kl_advantages + reward_weight * reward_advantages.unsqueeze(1).to(
        kl_advantages.dtype)
    return (mixed * mask.to(kl_advantages.dtype)).detach()
