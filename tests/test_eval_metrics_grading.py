"""pass@k / avg@k against brute force, and grading with the real math-verify."""

from __future__ import annotations

import itertools
from math import comb

import pytest

from opd_megatron.evaluation import (avg_at_k, extract_choice, final_text, grade_choice,
                                     grade_math, mean_pass_at_k, pass_at_k)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration_of_k_subsets(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_bounds():
    assert 0.0 < pass_at_k(64, 1, 1) == pytest.approx(1 / 64)
    assert pass_at_k(64, 1, 64) == 1.0
    assert pass_at_k(1000, 3, 10) == pytest.approx(1 - comb(997, 10) / comb(1000, 10), rel=1e-9)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_at_k_is_mean_accuracy_and_pass1():
    n, c = [4, 4, 4], [4, 1, 0]
    assert avg_at_k(n, c) == pytest.approx(5 / 12)
    assert mean_pass_at_k(n, c, 1) == pytest.approx(avg_at_k(n, c))
    assert mean_pass_at_k(n, c, 4) == pytest.approx(2 / 3)


@pytest.mark.parametrize("response,gold,ok", [
    (r"So the answer is \boxed{204}.", "204", True),
    (r"<think>maybe 17? no.</think>The answer is $\boxed{\dfrac{14}{3}}$", r"\frac{14}{3}", True),
    (r"We get $\boxed{0.5}$", r"\frac{1}{2}", True),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\boxed{205}", "204", False),
    (r"<think>the answer is \boxed{204} I think", "204", False),   # thinking never closed
    (r"<think>\boxed{204}</think> Final: \boxed{33}", "204", False),  # only after </think> counts
    ("I don't know.", "204", False),
])
def test_grade_math_with_math_verify(response, gold, ok):
    assert grade_math(response, gold) is ok


def test_final_text():
    assert final_text("<think>a</think>b") == "b"
    assert final_text("<think>a") is None
    assert final_text("plain") == "plain"


@pytest.mark.parametrize("response,letter", [
    ("Reasoning...\nAnswer: C", "C"),
    ("so the answer is (B).", "B"),
    (r"Final: $\boxed{D}$", "D"),
    ('{"answer": "A"}', "A"),
    ("<think>Answer: A</think>\nAnswer: B", "B"),
    ("no letter here", None),
    ("The answer is a bit subtle.\nAnswer: D", "D"),
    ("the answer is a bit subtle", None),
])
def test_extract_choice(response, letter):
    assert extract_choice(response) == letter
    if letter:
        assert grade_choice(response, letter) and not grade_choice(response, "ABCD".replace(letter, "")[0])
