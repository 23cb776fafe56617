"""sampled_token_logprobs / vocab_stats against brute-force float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opd_megatron.objective import sampled_token_logprobs, vocab_stats
from tests.objective_fixtures import ref_log_softmax, ref_sampled_logprobs

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def logits_and_ids(draw):
    num_rows = draw(st.integers(1, 3))
    num_pos = draw(st.integers(1, 9))
    vocab = draw(st.integers(2, 17))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    logits = torch.randn(num_rows, num_pos, vocab, generator=gen, dtype=torch.float64) * scale
    ids = torch.randint(0, vocab, (num_rows, num_pos), generator=gen)
    return logits, ids


@SETTINGS
@given(logits_and_ids(), st.sampled_from([1.0, 0.7, 1.5]), st.sampled_from([None, 1, 2, 5]))
def test_sampled_logprobs_match_brute_force(data, temperature, chunk_size):
    logits, ids = data
    out = sampled_token_logprobs(logits, ids, temperature=temperature, chunk_size=chunk_size)
    assert out.dtype == torch.float64 and out.shape == ids.shape
    torch.testing.assert_close(out, ref_sampled_logprobs(logits, ids, temperature),
                               rtol=0, atol=1e-12)


@SETTINGS
@given(logits_and_ids(), st.integers(1, 4))
def test_gradient_matches_autograd_of_reference(data, chunk_size):
    logits, ids = data
    weights = torch.randn(ids.shape, dtype=torch.float64)
    ours = logits.clone().requires_grad_()
    (sampled_token_logprobs(ours, ids, temperature=0.8, chunk_size=chunk_size) * weights
     ).sum().backward()
    theirs = logits.clone().requires_grad_()
    ref = torch.log_softmax(theirs / 0.8, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)


def test_gradcheck_all_outputs_of_vocab_stats_with_tail():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.stack([torch.randperm(7, generator=gen)[:3] for _ in range(10)]).view(2, 5, 3)

    def all_outputs(x):
        stats = vocab_stats(x, ids, temperature=1.3, chunk_size=2, num_excluded=2)
        return stats.lse_BT, stats.picked_BTK, stats.tail_lse_BT

    assert torch.autograd.gradcheck(all_outputs, (logits,))


def test_tail_lse_is_exact_even_when_tiny():
    """The tail is summed directly, not as 1 - sum(top-k): a 1e-30 tail keeps its digits."""
    logits = torch.tensor([[[80.0, 10.0, 11.0, 9.0]]], dtype=torch.float64)
    ids = torch.tensor([[[0, 2]]])
    stats = vocab_stats(logits.float(), ids, num_excluded=1)
    expected = math.log(sum(math.exp(v) for v in (10.0, 11.0, 9.0)))
    assert stats.tail_lse_BT is not None
    assert abs(float(stats.tail_lse_BT) - expected) < 1e-5
    tail_mass = math.exp(float(stats.tail_lse_BT - stats.lse_BT))
    assert 0 < tail_mass < 1e-29  # 1 - softmax(top-1) would round to exactly 0 in fp32
    # Excluding every id leaves an empty tail: -inf, and a zero (not NaN) gradient.
    x = logits.clone().requires_grad_()
    every = torch.tensor([[[3, 1, 0, 2]]])
    stats = vocab_stats(x, every, num_excluded=4)
    assert stats.tail_lse_BT is not None and stats.tail_lse_BT.item() == -math.inf
    (stats.lse_BT.sum() + stats.tail_lse_BT.clamp(min=-1e9).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_chunked_equals_unchunked_bitwise_per_position_in_fp32():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 37, 50, generator=gen) * 5
    ids = torch.randint(0, 50, (3, 37), generator=gen)
    whole = sampled_token_logprobs(logits, ids, chunk_size=37)
    for chunk in (1, 4, 10, 36):
        torch.testing.assert_close(sampled_token_logprobs(logits, ids, chunk_size=chunk), whole,
                                   rtol=0, atol=1e-6)


def test_bf16_input_gives_fp32_output_matching_fp64_of_the_same_values():
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 6, 33, generator=gen) * 4).to(torch.bfloat16)
    ids = torch.randint(0, 33, (2, 6), generator=gen)
    out = sampled_token_logprobs(logits, ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_sampled_logprobs(logits.double(), ids),
                               rtol=0, atol=2e-6)
    x = logits.clone().requires_grad_()
    sampled_token_logprobs(x, ids).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_shifted_non_contiguous_slice_is_accepted_without_copy_semantics_issues():
    """The caller passes logits[:, :-1]; the gradient lands in the right positions."""
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(2, 6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 9, (2, 6), generator=gen)
    out = sampled_token_logprobs(full[:, :-1], tokens[:, 1:], chunk_size=2)
    out.sum().backward()
    assert full.grad is not None and torch.all(full.grad[:, -1] == 0)
    ref = torch.tensor([[ref_log_softmax(full[b, t].tolist())[int(tokens[b, t + 1])]
                         for t in range(5)] for b in range(2)], dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", ["id_high", "id_negative", "shape", "temperature"])
def test_bad_inputs_raise_one_clear_error(bad):
    logits = torch.zeros(1, 3, 5)
    ids = torch.zeros(1, 3, dtype=torch.long)
    kwargs = {}
    if bad == "id_high":
        ids[0, 1] = 5
    elif bad == "id_negative":
        ids[0, 1] = -1
    elif bad == "shape":
        ids = torch.zeros(1, 4, dtype=torch.long)
    else:
        kwargs["temperature"] = 0.0
    with pytest.raises(ValueError, match="token ids|must match|temperature"):
        sampled_token_logprobs(logits, ids, **kwargs)
