"""OPD / GRPO advantages against brute-force float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opd_megatron.objective import (
    combine_advantages,
    group_normalized_advantages,
    reverse_kl_advantages,
)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


@st.composite
def token_batch(draw):
    num_rows, num_pos = draw(st.integers(1, 4)), draw(st.integers(1, 10))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    sampler = -torch.rand(num_rows, num_pos, generator=gen, dtype=torch.float64) * 5
    teacher = -torch.rand(num_rows, num_pos, generator=gen, dtype=torch.float64) * 5
    mask = (torch.rand(num_rows, num_pos, generator=gen) < draw(st.floats(0.0, 1.0))).double()
    return sampler, teacher, mask


def ref_advantages(sampler, teacher, mask, coef, gamma):
    out = torch.zeros_like(sampler)
    for b in range(sampler.shape[0]):
        for t in range(sampler.shape[1]):
            if mask[b, t] == 0:
                continue
            out[b, t] = sum(gamma ** (u - t) * -coef * float(sampler[b, u] - teacher[b, u])
                            * float(mask[b, u]) for u in range(t, sampler.shape[1]))
    return out


@SETTINGS
@given(token_batch(), st.sampled_from([1.0, 0.5, 2.0]), st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_reverse_kl_advantages_match_reference(data, coef, gamma):
    sampler, teacher, mask = data
    out = reverse_kl_advantages(sampler, teacher, mask, coef=coef, discount=gamma)
    torch.testing.assert_close(out, ref_advantages(sampler, teacher, mask, coef, gamma),
                               rtol=1e-12, atol=1e-12)
    assert not out.requires_grad


def test_default_is_each_tokens_own_term_and_zero_off_the_response():
    sampler = torch.tensor([[-1.0, -2.0, -0.5]])
    teacher = torch.tensor([[-3.0, -1.0, -0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    # token 1: the teacher likes it more than the sampler did (-1 > -2): positive advantage
    assert reverse_kl_advantages(sampler, teacher, mask).tolist() == [[0.0, 1.0, 0.0]]


@st.composite
def groups(draw):
    num = draw(st.integers(1, 12))
    rewards = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -2.0]), min_size=num, max_size=num))
    ids = draw(st.lists(st.integers(0, 3), min_size=num, max_size=num))
    return torch.tensor(rewards, dtype=torch.float64), torch.tensor(ids)


@SETTINGS
@given(groups())
def test_group_normalized_matches_reference(data):
    rewards, ids = data
    out = group_normalized_advantages(rewards, ids, eps=1e-6)
    for i in range(len(rewards)):
        members = [float(rewards[j]) for j in range(len(rewards)) if ids[j] == ids[i]]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((r - mean) ** 2 for r in members) / len(members))
        assert abs(float(out[i]) - (float(rewards[i]) - mean) / (std + 1e-6)) < 1e-9


def test_uniform_groups_carry_no_signal():
    rewards, group_ids = torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([5, 5, 7, 9])
    out = group_normalized_advantages(rewards, group_ids)
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0]


@SETTINGS
@given(token_batch(), st.floats(0, 2), st.floats(0, 2))
def test_combine_advantages(data, kl_weight, reward_weight):
    kl, _, mask = data
    reward = torch.arange(kl.shape[0], dtype=torch.float64) - 1.5
    out = combine_advantages(kl, reward, mask, kl_weight=kl_weight, reward_weight=reward_weight)
    for b in range(kl.shape[0]):
        for t in range(kl.shape[1]):
            expected = ((kl_weight * float(kl[b, t]) + reward_weight * float(reward[b]))
                        * float(mask[b, t]))
            assert abs(float(out[b, t]) - expected) < 1e-12


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="shapes must match"):
        reverse_kl_advantages(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="discount"):
        reverse_kl_advantages(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), discount=2.0)
    with pytest.raises(ValueError, match=r"reward_advantages must be \[B\]"):
        combine_advantages(torch.zeros(2, 3), torch.zeros(3), torch.zeros(2, 3), kl_weight=1,
                           reward_weight=1)
