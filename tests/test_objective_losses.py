"""compute_loss / build_advantages / validate_objective: the one entry point the learner calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from opd_megatron.config.schema import ObjectiveConfig
from opd_megatron.errors import ConfigError
from opd_megatron.objective import (
    build_advantages,
    compute_loss,
    full_vocab_divergence,
    group_normalized_advantages,
    policy_loss,
    reverse_kl_advantages,
    sft_loss,
    topk_divergence,
    validate_objective,
)
from opd_megatron.types import TrainBatch
from tests.objective_fixtures import ref_sampled_logprobs, teacher_topk

B, S, V = 3, 8, 10


def _batch(num_topk: int = V, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(B, S, V, generator=gen, dtype=torch.float64) * 2
    tokens = torch.randint(0, V, (B, S), generator=gen)
    mask = torch.zeros(B, S, dtype=torch.float64)
    mask[:, 3:] = 1.0
    mask[2, 6:] = 0.0
    sampler = ref_sampled_logprobs(logits, tokens.roll(-1, 1)).roll(1, 1) * mask
    sampler = sampler + 0.1 * torch.randn(B, S, generator=gen, dtype=torch.float64) * mask
    ids, lps = teacher_topk(teacher.roll(1, 1), num_topk)  # entry s describes token s
    batch = TrainBatch(token_ids=tokens, response_mask=mask, sampler_logprobs=sampler,
                       advantages=torch.randn(B, S, generator=gen, dtype=torch.float64) * mask,
                       group_ids=torch.tensor([0, 0, 1]), teacher_topk_ids=ids,
                       teacher_topk_logprobs=lps)
    return logits, teacher, batch


def _learner_logprobs(logits, batch):
    return ref_sampled_logprobs(logits[:, :-1], batch.token_ids[:, 1:])


def test_sft_is_token_nll_of_the_shifted_tokens():
    logits, _, batch = _batch()
    objective = ObjectiveConfig(method="sft")
    loss, metrics = compute_loss(objective, logits, batch)
    expected, _ = sft_loss(_learner_logprobs(logits, batch), batch.response_mask[:, 1:])
    assert abs(float(loss) - float(expected)) < 1e-12 and metrics["loss"] == float(loss)


@pytest.mark.parametrize("method", ["opd", "rl", "opd+reward"])
@pytest.mark.parametrize("correction", ["plain", "truncated", "ppo_clip"])
def test_sampled_token_methods_are_the_policy_loss_on_batch_advantages(method, correction):
    logits, _, batch = _batch()
    objective = ObjectiveConfig(method=method, is_correction=correction, is_cap=1.05,
                                reward_weight=0.0 if method == "opd" else 1.0,
                                loss_norm="seq_mean", kl_estimator="sampled_token")
    x = logits.clone().requires_grad_()
    loss, metrics = compute_loss(objective, x, batch, temperature=1.0)
    expected, _ = policy_loss(_learner_logprobs(logits, batch), batch.sampler_logprobs[:, 1:],
                              batch.advantages[:, 1:], batch.response_mask[:, 1:],
                              correction=correction, is_cap=1.05, norm="seq_mean")
    assert abs(float(loss.detach()) - float(expected)) < 1e-12
    assert metrics["mismatch_abs"] > 0 and all(isinstance(v, float) for v in metrics.values())
    loss.backward()
    assert torch.all(x.grad[:, -1] == 0) and x.grad[:, 2:-1].abs().sum() > 0


@pytest.mark.parametrize("kind,num_topk", [("reverse_kl", V), ("forward_kl", 4), ("jsd", 3)])
def test_full_vocab_opd_is_kl_coef_times_the_divergence(kind, num_topk):
    logits, teacher, batch = _batch(num_topk)
    objective = ObjectiveConfig(method="opd", kl_estimator="full_vocab", divergence=kind,
                                jsd_beta=0.3, kl_coef=0.5)
    x = logits.clone().requires_grad_()
    loss, metrics = compute_loss(objective, x, batch, temperature=0.9, chunk_size=3)
    mask = batch.response_mask[:, 1:]
    expected, _ = topk_divergence(logits[:, :-1], batch.teacher_topk_ids[:, 1:],
                                  batch.teacher_topk_logprobs[:, 1:], mask, kind=kind,
                                  beta=0.3, temperature=0.9)
    assert abs(float(loss.detach()) - 0.5 * float(expected)) < 1e-12
    if num_topk == V:
        exact, _ = full_vocab_divergence(logits[:, :-1], teacher[:, :-1], mask, kind=kind,
                                         temperature=0.9)
        assert abs(float(expected) - float(exact)) < 1e-12
    assert {"kl_loss", "pg_loss", "mismatch_abs", "ratio_max"} <= set(metrics)
    loss.backward()
    grad_ref = logits.clone().requires_grad_()
    (0.5 * topk_divergence(grad_ref[:, :-1], batch.teacher_topk_ids[:, 1:],
                           batch.teacher_topk_logprobs[:, 1:], mask, kind=kind, beta=0.3,
                           temperature=0.9)[0]).backward()
    torch.testing.assert_close(x.grad, grad_ref.grad, rtol=0, atol=1e-12)


def test_full_vocab_opd_plus_reward_adds_the_policy_term():
    logits, _, batch = _batch(5)
    base = ObjectiveConfig(method="opd", kl_estimator="full_vocab")
    mixed = dataclasses.replace(base, method="opd+reward", reward_weight=1.0)
    kl_only, _ = compute_loss(base, logits, batch)
    both, metrics = compute_loss(mixed, logits, batch)
    pg, _ = policy_loss(_learner_logprobs(logits, batch), batch.sampler_logprobs[:, 1:],
                        batch.advantages[:, 1:], batch.response_mask[:, 1:])
    assert abs(float(both) - float(kl_only) - float(pg)) < 1e-12
    assert abs(metrics["pg_loss"] - float(pg)) < 1e-12


def test_full_vocab_without_teacher_topk_is_a_clear_error():
    logits, _, batch = _batch()
    batch.teacher_topk_ids = None
    with pytest.raises(ValueError, match="teacher_topk"):
        compute_loss(ObjectiveConfig(kl_estimator="full_vocab"), logits, batch)


def test_build_advantages_applies_each_weight_once():
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    sampler = -torch.rand(3, 3)
    teacher = -torch.rand(3, 3)
    rewards, groups = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1])
    kw = dict(sampler_logprobs_BT=sampler, teacher_logprobs_BT=teacher, rewards_B=rewards,
              group_ids_B=groups)
    kl = reverse_kl_advantages(sampler, teacher, mask, coef=0.5, discount=0.5)
    reward = group_normalized_advantages(rewards, groups)[:, None] * mask
    opd = ObjectiveConfig(kl_coef=0.5, discount=0.5)
    torch.testing.assert_close(build_advantages(opd, mask, **kw), kl)
    rl = ObjectiveConfig(method="rl", reward_weight=2.0)
    torch.testing.assert_close(build_advantages(rl, mask, **kw), 2.0 * reward)
    both = dataclasses.replace(opd, method="opd+reward", reward_weight=2.0)
    torch.testing.assert_close(build_advantages(both, mask, **kw), kl + 2.0 * reward)
    full = dataclasses.replace(both, kl_estimator="full_vocab")  # KL is a loss term instead
    torch.testing.assert_close(build_advantages(full, mask, **kw), 2.0 * reward)
    assert build_advantages(ObjectiveConfig(method="sft"), mask).abs().sum() == 0


@pytest.mark.parametrize("override,key", [
    ({"method": "ppo"}, "objective.method"),
    ({"kl_estimator": "k3"}, "objective.kl_estimator"),
    ({"method": "rl"}, "objective.reward_weight"),
    ({"reward_weight": 0.5}, "objective.reward_weight"),
    ({"discount": 1.5}, "objective.discount"),
    ({"jsd_beta": -0.1}, "objective.jsd_beta"),
    ({"is_cap": 0.0}, "objective.is_cap"),
    ({"kl_coef": -1.0}, "objective.kl_coef"),
])
def test_validate_objective_names_the_key(override, key):
    validate_objective(ObjectiveConfig())
    validate_objective(ObjectiveConfig(method="rl", reward_weight=1.0))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_objective(dataclasses.replace(ObjectiveConfig(), **override))


def test_objective_package_is_pure_torch():
    """The loss math must import without Megatron or SGLang (style rule 5)."""
    import subprocess
    import sys

    code = ("import sys, opd_megatron.objective; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('megatron', 'sglang')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
