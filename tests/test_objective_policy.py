"""policy_loss / sft_loss / masked_mean against brute-force references and analytic gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opd_megatron.objective import masked_mean, policy_loss, sft_loss
from tests.objective_fixtures import ref_masked_mean

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


@st.composite
def policy_batch(draw):
    num_rows, num_pos = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    sampler = -torch.rand(num_rows, num_pos, generator=gen, dtype=torch.float64) * 3
    learner = sampler + torch.randn(num_rows, num_pos, generator=gen, dtype=torch.float64) * 0.7
    advantages = torch.randn(num_rows, num_pos, generator=gen, dtype=torch.float64)
    mask = (torch.rand(num_rows, num_pos, generator=gen) < draw(st.floats(0.0, 1.0))).double()
    return learner, sampler, advantages, mask


def ref_surrogate(learner, sampler, adv, correction, cap, eps):
    ratio = math.exp(learner - sampler)
    if correction == "plain":
        return ratio * adv
    if correction == "truncated":
        return min(ratio, cap) * adv
    return min(ratio * adv, min(max(ratio, 1 - eps), 1 + eps) * adv)


def ref_grad(learner, sampler, adv, correction, cap, eps):
    """d surrogate / d learner_logprob, by hand."""
    ratio = math.exp(learner - sampler)
    if correction == "plain":
        return ratio * adv
    if correction == "truncated":
        return min(ratio, cap) * adv
    clipped = min(max(ratio, 1 - eps), 1 + eps)
    return ratio * adv if ratio * adv <= clipped * adv else 0.0


@SETTINGS
@given(policy_batch(), st.sampled_from(["plain", "truncated", "ppo_clip"]),
       st.sampled_from(["token_mean", "seq_mean"]))
def test_policy_loss_value_and_gradient(data, correction, norm):
    learner, sampler, adv, mask = data
    x = learner.clone().requires_grad_()
    loss, metrics = policy_loss(x, sampler, adv, mask, correction=correction, is_cap=1.5,
                                clip_eps=0.2, norm=norm)
    shape = learner.shape
    surrogate = torch.tensor([[ref_surrogate(float(learner[b, t]), float(sampler[b, t]),
                                             float(adv[b, t]), correction, 1.5, 0.2)
                               for t in range(shape[1])] for b in range(shape[0])],
                             dtype=torch.float64)
    assert abs(float(loss.detach()) + ref_masked_mean(surrogate, mask, norm)) < 1e-10
    assert isinstance(metrics["loss"], float) and metrics["num_tokens"] == float(mask.sum())
    loss.backward()
    for b in range(shape[0]):
        per_token = (1.0 / max(1.0, float(mask.sum())) if norm == "token_mean" else
                     1.0 / max(1.0, float(mask[b].sum())) / max(1, int((mask.sum(-1) > 0).sum())))
        for t in range(shape[1]):
            expected = -ref_grad(float(learner[b, t]), float(sampler[b, t]), float(adv[b, t]),
                                 correction, 1.5, 0.2) * per_token * float(mask[b, t])
            assert abs(float(x.grad[b, t]) - expected) < 1e-10


def test_gradcheck_each_correction():
    """Numerical vs analytic gradient. is_cap is above every ratio here: where the cap binds,
    truncated IS deliberately keeps the capped weight as the gradient (not the value's slope),
    which test_policy_loss_value_and_gradient checks by hand."""
    gen = torch.Generator().manual_seed(0)
    sampler = -torch.rand(3, 4, generator=gen, dtype=torch.float64)
    learner = (sampler + 0.3 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
               ).requires_grad_()
    adv = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float64)
    for correction in ("plain", "truncated", "ppo_clip"):
        for norm in ("token_mean", "seq_mean"):
            assert torch.autograd.gradcheck(
                lambda x: policy_loss(x, sampler, adv, mask, correction=correction, is_cap=5.0,
                                      norm=norm)[0], (learner,))


def test_mismatch_metrics_report_sampler_learner_gap():
    sampler = torch.tensor([[-1.0, -2.0, -9.0]])
    learner = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _, m = policy_loss(learner, sampler, torch.ones(1, 3), mask, correction="truncated",
                       is_cap=2.0)
    assert abs(m["mismatch_abs"] - 0.75) < 1e-6
    ratios = [math.exp(-0.5), math.exp(1.0)]
    assert abs(m["ratio_max"] - ratios[1]) < 1e-5 and abs(m["ratio_min"] - ratios[0]) < 1e-6
    assert abs(m["mismatch_kl"] - sum(r - 1 - math.log(r) for r in ratios) / 2) < 1e-6
    assert m["capped_frac"] == 0.5 and m["clipped_frac"] == 1.0
    # Identical sampler and learner: no mismatch, ratio exactly 1.
    _, same = policy_loss(sampler, sampler, torch.ones(1, 3), mask)
    assert same["mismatch_abs"] == 0.0 and same["ratio_min"] == same["ratio_max"] == 1.0


def test_padding_outside_mask_cannot_overflow():
    sampler = torch.tensor([[-1.0, -1000.0]])
    learner = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    loss, metrics = policy_loss(learner, sampler, torch.ones(1, 2), torch.tensor([[1.0, 0.0]]),
                                correction="plain")
    loss.backward()
    assert math.isfinite(float(loss.detach())) and math.isfinite(metrics["ratio_max"])
    assert torch.isfinite(learner.grad).all()


@SETTINGS
@given(policy_batch(), st.sampled_from(["token_mean", "seq_mean"]))
def test_sft_loss_and_masked_mean(data, norm):
    learner, _, _, mask = data
    loss, metrics = sft_loss(learner, mask, norm=norm)
    assert abs(float(loss) + ref_masked_mean(learner, mask, norm)) < 1e-12
    assert metrics["loss"] == float(loss)
    ours = float(masked_mean(learner, mask, norm))
    assert abs(ours - ref_masked_mean(learner, mask, norm)) < 1e-12


def test_bad_arguments():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="correction"):
        policy_loss(z, z, z, z, correction="magic")
    with pytest.raises(ValueError, match="norm"):
        sft_loss(z, z, norm="sum")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss(z, torch.zeros(2, 4), z, z)
