"""topk_divergence / full_vocab_divergence against brute force, tail mass, and the Monte Carlo
check that the sampled-token estimator is unbiased for the exact reverse KL."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opd_megatron.objective import (
    full_vocab_divergence,
    policy_loss,
    reverse_kl_advantages,
    sampled_token_logprobs,
    topk_divergence,
)
from tests.objective_fixtures import ref_masked_mean, ref_topk_terms, teacher_topk

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
KINDS = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.0),
         ("jsd", 1.0)]


@st.composite
def distill_batch(draw):
    num_rows, num_pos = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    vocab = draw(st.integers(2, 12))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    student = torch.randn(num_rows, num_pos, vocab, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(num_rows, num_pos, vocab, generator=gen, dtype=torch.float64) * 3
    mask = (torch.rand(num_rows, num_pos, generator=gen) < 0.7).double()
    num_topk = draw(st.integers(1, vocab))
    return student, teacher, mask, num_topk


@SETTINGS
@given(distill_batch(), st.sampled_from(KINDS), st.sampled_from(["token_mean", "seq_mean"]),
       st.sampled_from([1.0, 0.8]), st.sampled_from([None, 1, 4]))
def test_topk_divergence_matches_brute_force(data, kind_beta, norm, temperature, chunk_size):
    student, teacher, mask, num_topk = data
    kind, beta = kind_beta
    ids, logprobs = teacher_topk(teacher, num_topk)
    loss, metrics = topk_divergence(student, ids, logprobs, mask, kind=kind, beta=beta,
                                    temperature=temperature, norm=norm, chunk_size=chunk_size)
    terms = ref_topk_terms(student, ids, logprobs, kind, beta, temperature)
    assert abs(float(loss) - ref_masked_mean(terms, mask, norm)) < 1e-10
    assert all(isinstance(v, float) for v in metrics.values())


@SETTINGS
@given(distill_batch(), st.sampled_from(KINDS), st.sampled_from(["token_mean", "seq_mean"]))
def test_k_equals_v_is_the_exact_full_vocab_value(data, kind_beta, norm):
    student, teacher, mask, _ = data
    kind, beta = kind_beta
    vocab = student.shape[-1]
    ids, logprobs = teacher_topk(teacher, vocab)
    via_topk, m = topk_divergence(student, ids, logprobs, mask, kind=kind, beta=beta, norm=norm)
    via_full, _ = full_vocab_divergence(student, teacher, mask, kind=kind, beta=beta, norm=norm,
                                        chunk_size=2)
    exact = ref_masked_mean(ref_topk_terms(student, ids, logprobs, kind, beta), mask, norm)
    assert abs(float(via_topk) - exact) < 1e-10 and abs(float(via_full) - exact) < 1e-10
    assert m["teacher_tail_mass"] == 0.0 and m["student_tail_mass"] == 0.0


@pytest.mark.parametrize("kind,beta", KINDS)
def test_gradcheck_topk_and_full_vocab(kind, beta):
    gen = torch.Generator().manual_seed(7)
    student = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    ids, logprobs = teacher_topk(teacher, 3)
    assert torch.autograd.gradcheck(lambda x: topk_divergence(
        x, ids, logprobs, mask, kind=kind, beta=beta, temperature=0.9, chunk_size=2)[0],
        (student,))
    assert torch.autograd.gradcheck(lambda x: full_vocab_divergence(
        x, teacher, mask, kind=kind, beta=beta, temperature=0.9, chunk_size=1)[0], (student,))


def test_tail_bucket_lower_bounds_full_kl_and_reports_masses():
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(1, 4, 30, generator=gen, dtype=torch.float64)
    teacher = torch.randn(1, 4, 30, generator=gen, dtype=torch.float64) * 2
    mask = torch.ones(1, 4, dtype=torch.float64)
    exact, _ = full_vocab_divergence(student, teacher, mask, kind="reverse_kl")
    previous = -1.0
    for k in (1, 5, 15, 29, 30):
        ids, logprobs = teacher_topk(teacher, k)
        value, m = topk_divergence(student, ids, logprobs, mask, kind="reverse_kl")
        assert previous - 1e-12 <= float(value) <= float(exact) + 1e-12  # refining only adds
        previous = float(value)
        teacher_tail = 1 - logprobs.exp().sum(-1)
        student_tail = 1 - torch.softmax(student, -1).gather(-1, ids).sum(-1)
        assert abs(m["teacher_tail_mass"] - float(teacher_tail.mean())) < 1e-9 or k == 30
        assert abs(m["student_tail_mass"] - float(student_tail.mean())) < 1e-9 or k == 30
    assert abs(previous - float(exact)) < 1e-12


def test_teacher_topk_covering_all_mass_keeps_reverse_kl_finite():
    """A teacher whose top-k logprobs sum to >= 1 (rounding) has tail 0: floored, not log(0)."""
    student = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]], requires_grad=True)
    ids = torch.tensor([[[0, 1]]])
    logprobs = torch.log(torch.tensor([[[0.7, 0.3000001]]]))
    loss, m = topk_divergence(student, ids, logprobs, torch.ones(1, 1), kind="reverse_kl")
    loss.backward()
    assert math.isfinite(float(loss.detach())) and torch.isfinite(student.grad).all()
    assert m["teacher_tail_mass"] == pytest.approx(1e-8, rel=1e-3)
    # The student's own tail (mass on ids 2 and 3) is penalised against the floor.
    q = torch.softmax(student.detach().double(), -1)[0, 0]
    q_tail = float(q[2] + q[3])
    assert m["student_tail_mass"] == pytest.approx(q_tail, rel=1e-5)
    expected = (float(q[0]) * math.log(float(q[0]) / 0.7)
                + float(q[1]) * math.log(float(q[1]) / 0.3000001)
                + q_tail * math.log(q_tail / 1e-8))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_monte_carlo_sampled_token_estimator_is_unbiased_for_reverse_kl():
    """E_{x~q}[-A(x)] = KL(q || p) and E[grad of the IS loss] = grad KL (score function)."""
    vocab, num_samples = 6, 100_000
    gen = torch.Generator().manual_seed(11)
    student = torch.randn(vocab, generator=gen, dtype=torch.float64) * 1.5
    teacher_lp = torch.log_softmax(torch.randn(vocab, generator=gen, dtype=torch.float64) * 2, -1)
    logits = student.expand(1, num_samples, vocab).clone().requires_grad_()
    with torch.no_grad():
        samples = torch.multinomial(torch.softmax(student, -1), num_samples, replacement=True,
                                    generator=gen).unsqueeze(0)
    learner = sampled_token_logprobs(logits, samples)
    mask = torch.ones_like(learner)
    advantages = reverse_kl_advantages(learner.detach(), teacher_lp[samples], mask)
    exact_student = student.clone().requires_grad_()
    q_log = torch.log_softmax(exact_student, -1)
    exact_kl = (q_log.exp() * (q_log - teacher_lp)).sum()
    exact_kl.backward()
    estimate = -advantages.mean()
    std_err = advantages.std() / math.sqrt(num_samples)
    assert abs(float(estimate) - float(exact_kl.detach())) < 4 * float(std_err)
    loss, _ = policy_loss(learner, learner.detach(), advantages, mask, correction="plain")
    loss.backward()
    grad_estimate = logits.grad[0].sum(0)  # token-mean already divides by num_samples
    assert torch.allclose(grad_estimate, exact_student.grad, atol=0.01)  # MC error ~2e-3
    assert float(exact_kl.detach()) > 0.1  # the check is not trivially satisfied by a zero KL


def test_bad_kind_and_shapes():
    x = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="kind"):
        topk_divergence(x, torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2),
                        torch.ones(1, 2), kind="tvd")
    with pytest.raises(ValueError, match="beta"):
        full_vocab_divergence(x, x, torch.ones(1, 2), kind="jsd", beta=1.5)
    with pytest.raises(ValueError, match="must match"):
        topk_divergence(x, torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3),
                        torch.ones(1, 2))
