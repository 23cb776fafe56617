"""avg@k and pass@k over per-problem correctness counts.

avg@k: the mean over problems of (correct samples / samples), i.e. pass@1 estimated from k
samples (the Qwen3 report's "pass@1 averaged over 64 samples"). pass@k: the unbiased
estimator of Chen et al. 2021 (Codex), 1 - C(n-c, k) / C(n, k) per problem, which uses all
n >= k samples rather than the first k, so it has lower variance than a plain subsample.
"""

from __future__ import annotations

from typing import Sequence


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples (drawn without replacement from n) is right.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    """
    n, c = num_samples, num_correct
    if not 0 <= c <= n:
        raise ValueError(f"num_correct={c} must be in [0, num_samples={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, num_samples={n}]")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems."""
    if not num_samples:
        raise ValueError("no problems to average over")
    return sum(pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)) / len(num_samples)


def avg_at_k(num_samples: Sequence[int], num_correct: Sequence[int]) -> float:
    """Mean per-problem accuracy over its samples (avg@k with k = samples per problem)."""
    if not num_samples:
        raise ValueError("no problems to average over")
    return sum(c / n for n, c in zip(num_samples, num_correct)) / len(num_samples)
