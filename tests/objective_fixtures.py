"""Brute-force float64 references for the objective tests: plain Python loops over positions
with the math module, deliberately sharing no code with opd_megatron.objective."""

from __future__ import annotations

import math
from typing import List, Sequence

import torch


def ref_log_softmax(row: Sequence[float], temperature: float = 1.0) -> List[float]:
    z = [float(x) / temperature for x in row]
    top = max(z)
    lse = top + math.log(sum(math.exp(x - top) for x in z))
    return [x - lse for x in z]


def ref_sampled_logprobs(logits_BTV: torch.Tensor, ids_BT: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    num_rows, num_pos, _ = logits_BTV.shape
    out = torch.zeros(num_rows, num_pos, dtype=torch.float64)
    for b in range(num_rows):
        for t in range(num_pos):
            out[b, t] = ref_log_softmax(logits_BTV[b, t].tolist(), temperature)[int(ids_BT[b, t])]
    return out


def ref_divergence(q: Sequence[float], p: Sequence[float], kind: str, beta: float) -> float:
    """Divergence between student probs q and teacher probs p (lists over categories)."""
    def kl(a, b):
        return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b) if x > 0)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return kl(p, q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return kl(q, p)
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def ref_topk_terms(student_BTV, topk_ids_BTK, topk_lp_BTK, kind, beta, temperature=1.0,
                   floor=1e-8) -> torch.Tensor:
    """[B, T] divergence over K teacher categories plus one tail bucket (none when K = V)."""
    num_rows, num_pos, vocab = student_BTV.shape
    out = torch.zeros(num_rows, num_pos, dtype=torch.float64)
    for b in range(num_rows):
        for t in range(num_pos):
            q_all = [math.exp(x) for x in ref_log_softmax(student_BTV[b, t].tolist(), temperature)]
            ids = [int(i) for i in topk_ids_BTK[b, t]]
            q = [q_all[i] for i in ids]
            p = [math.exp(float(x)) for x in topk_lp_BTK[b, t]]
            if len(ids) < vocab:
                q.append(sum(x for i, x in enumerate(q_all) if i not in set(ids)))
                p.append(max(1.0 - sum(p), floor))
            out[b, t] = ref_divergence(q, p, kind, beta)
    return out


def ref_masked_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor, norm: str) -> float:
    rows = []
    for b in range(values_BT.shape[0]):
        rows.append([float(v) for v, m in zip(values_BT[b], mask_BT[b]) if m > 0])
    if norm == "token_mean":
        flat = [v for row in rows for v in row]
        return sum(flat) / len(flat) if flat else 0.0
    means = [sum(row) / len(row) for row in rows if row]
    return sum(means) / len(means) if means else 0.0


def teacher_topk(teacher_BTV: torch.Tensor, num_topk: int):
    """The teacher's top-k ids and logprobs (float64), as a server would return them."""
    logprobs = torch.log_softmax(teacher_BTV.double(), dim=-1)
    values, ids = logprobs.topk(num_topk, dim=-1)
    return ids, values
