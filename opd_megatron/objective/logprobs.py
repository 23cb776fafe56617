"""Log-softmax statistics of logits without materialising an fp32 [B, T, V] tensor.

Why: at vocab 151,936 the naive ``log_softmax(logits.float()).gather(...)`` allocates two fp32
copies of the logits (the cast and the output), gigabytes for one long sequence, only to keep one
number per position. Here the logits are read in chunks along T (every chunk covers all B rows);
each chunk yields its logsumexp and, when asked, the logsumexp of the "tail" (the vocabulary
minus a set of excluded ids, e.g. the teacher's top-k). The backward pass recomputes the softmax
chunk by chunk, so autograd keeps no fp32 [B, T, V] either: the only full-size tensor is the
gradient of the logits itself, in the logits' dtype.

Tensor parallelism: with ``tp_group`` the logits are this rank's vocabulary shard
[B, T, V/tp] (rank r holds ids [r*V/tp, (r+1)*V/tp), as Megatron's VocabUtility lays them out)
and ids are global. Each rank computes its local logsumexp; the global one is
``m + log(all_reduce_sum(exp(lse_r - m)))`` with ``m = all_reduce_max(lse_r)``, the max / sum-exp
reduction of Megatron's vocab-parallel cross entropy done on [B, T] partials. Picked logits are
gathered where the id is local and summed across ranks. Backward needs no communication: the
loss is replicated over the TP group, so each rank's shard gradient is local.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

CHUNK_ELEMENTS = 1 << 20
"""Default fp32 elements per chunk (4 MiB, ~7 positions at vocab 151,936). Measured on CPU
(bench/logprob_memory.py): chunks that stay cache-resident make the chunked path faster than
the naive one; 16x larger chunks were ~2x slower, 4x smaller ones paid Python overhead."""


@dataclass
class VocabStats:
    """What one pass over the logits yields (fp32, fp64 for fp64 logits; temperature applied)."""

    lse_BT: torch.Tensor
    """[B, T] logsumexp over the whole (global) vocabulary of logits / temperature."""
    picked_BTK: torch.Tensor
    """[B, T, K] logits / temperature at the requested global ids."""
    tail_lse_BT: Optional[torch.Tensor]
    """[B, T] logsumexp over the vocabulary minus the first ``num_excluded`` ids (-inf when they
    cover it all); None when ``num_excluded`` is 0."""


def _positions_per_chunk(num_rows: int, vocab_size: int, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 position, got {chunk_size}")
        return chunk_size
    return max(1, CHUNK_ELEMENTS // max(1, num_rows * vocab_size))


def _shard_info(local_vocab: int, tp_group) -> Tuple[int, int]:
    """(vocab_start of this rank, global vocab size)."""
    if tp_group is None:
        return 0, local_vocab
    rank = dist.get_rank(group=tp_group)
    world = dist.get_world_size(group=tp_group)
    return rank * local_vocab, local_vocab * world


def _combine_lse(local_lse: torch.Tensor, tp_group) -> torch.Tensor:
    """Global logsumexp from per-rank partial logsumexps (stable, -inf safe)."""
    if tp_group is None:
        return local_lse
    top = local_lse.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=tp_group)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(local_lse - top)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=tp_group)
    return top + torch.log(total)


def _local_index(ids: torch.Tensor, vocab_start: int, local_vocab: int):
    """Clamped local column of each global id and whether it lives on this rank."""
    local = ids - vocab_start
    in_range = (local >= 0) & (local < local_vocab)
    return local.clamp(0, local_vocab - 1), in_range


def _put(rows_NV: torch.Tensor, cols_NK: torch.Tensor, keep_NK: torch.Tensor,
         values, accumulate: bool) -> None:
    """rows_NV[n, cols[n, k]] = (or +=) values for entries where keep; duplicates allowed."""
    row_idx = torch.arange(rows_NV.shape[0], device=rows_NV.device).unsqueeze(1).expand_as(cols_NK)
    if isinstance(values, torch.Tensor):
        values = values[keep_NK]
    else:
        values = torch.full((int(keep_NK.sum()),), float(values), dtype=rows_NV.dtype,
                            device=rows_NV.device)
    rows_NV.index_put_((row_idx[keep_NK], cols_NK[keep_NK]), values, accumulate=accumulate)


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 logits; fp64 stays fp64 (the tests' gradcheck references)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class _VocabStatsFn(torch.autograd.Function):
    """Chunked (vocab-parallel) logsumexp, tail logsumexp and picked logits, chunked backward."""

    @staticmethod
    def forward(ctx, logits_BTV, ids_BTK, temperature, chunk_size, tp_group, num_excluded):
        num_rows, num_pos, local_vocab = logits_BTV.shape
        vocab_start, _ = _shard_info(local_vocab, tp_group)
        cols_BTK, in_range_BTK = _local_index(ids_BTK, vocab_start, local_vocab)
        step = _positions_per_chunk(num_rows, local_vocab, chunk_size)
        cdtype = _compute_dtype(logits_BTV)
        lse_BT = torch.empty(num_rows, num_pos, dtype=cdtype, device=logits_BTV.device)
        tail_BT = torch.full((num_rows, num_pos), float("-inf"), dtype=cdtype,
                             device=logits_BTV.device)
        for t0 in range(0, num_pos, step):
            z = logits_BTV[:, t0:t0 + step].to(cdtype)
            if temperature != 1.0:
                z = z / temperature
            lse = torch.logsumexp(z, dim=-1)
            lse_BT[:, t0:t0 + step] = lse
            if num_excluded:
                probs_NV = torch.exp(z - lse.unsqueeze(-1)).view(-1, local_vocab)
                cols = cols_BTK[:, t0:t0 + step, :num_excluded].reshape(-1, num_excluded)
                keep = in_range_BTK[:, t0:t0 + step, :num_excluded].reshape(-1, num_excluded)
                _put(probs_NV, cols, keep, 0.0, accumulate=False)
                tail_BT[:, t0:t0 + step] = lse + torch.log(probs_NV.sum(-1)).view_as(lse)
        picked_BTK = logits_BTV.gather(-1, cols_BTK).to(cdtype) / temperature
        picked_BTK = torch.where(in_range_BTK, picked_BTK, torch.zeros_like(picked_BTK))
        if tp_group is not None:
            dist.all_reduce(picked_BTK, op=dist.ReduceOp.SUM, group=tp_group)
        lse_BT = _combine_lse(lse_BT, tp_group)
        tail_BT = _combine_lse(tail_BT, tp_group) if num_excluded else tail_BT
        ctx.save_for_backward(logits_BTV, cols_BTK, in_range_BTK, lse_BT, tail_BT)
        ctx.config = (temperature, step, num_excluded)
        return lse_BT, picked_BTK, tail_BT

    @staticmethod
    def backward(ctx, g_lse_BT, g_picked_BTK, g_tail_BT):
        logits_BTV, cols_BTK, in_range_BTK, lse_BT, tail_BT = ctx.saved_tensors
        temperature, step, num_excluded = ctx.config
        local_vocab = logits_BTV.shape[-1]
        grad_BTV = torch.empty(logits_BTV.shape, dtype=logits_BTV.dtype, device=logits_BTV.device)
        # d tail_lse / d z_v = exp(z_v - tail_lse) = softmax_v * exp(lse - tail_lse) off the
        # excluded ids; zero everywhere when the tail is empty.
        tail_scale_BT = torch.where(torch.isfinite(tail_BT),
                                    g_tail_BT * torch.exp(lse_BT - tail_BT),
                                    torch.zeros_like(tail_BT))
        for t0 in range(0, logits_BTV.shape[1], step):
            sl = slice(t0, t0 + step)
            z = logits_BTV[:, sl].to(lse_BT.dtype)
            if temperature != 1.0:
                z = z / temperature
            # Fresh tensors from here on, so the in-place ops never touch the saved logits.
            probs = torch.sub(z, lse_BT[:, sl].unsqueeze(-1)).exp_()
            grad = probs.mul(g_lse_BT[:, sl].unsqueeze(-1)) if num_excluded else probs.mul_(
                g_lse_BT[:, sl].unsqueeze(-1))
            if num_excluded:
                tail_NV = probs.mul_(tail_scale_BT[:, sl].unsqueeze(-1)).view(-1, local_vocab)
                cols = cols_BTK[:, sl, :num_excluded].reshape(-1, num_excluded)
                keep = in_range_BTK[:, sl, :num_excluded].reshape(-1, num_excluded)
                _put(tail_NV, cols, keep, 0.0, accumulate=False)
                grad += tail_NV.view_as(grad)
            num_picked = cols_BTK.shape[-1]
            _put(grad.view(-1, local_vocab), cols_BTK[:, sl].reshape(-1, num_picked),
                 in_range_BTK[:, sl].reshape(-1, num_picked),
                 g_picked_BTK[:, sl].reshape(-1, num_picked), accumulate=True)
            if temperature != 1.0:
                grad /= temperature
            grad_BTV[:, sl] = grad
        return grad_BTV, None, None, None, None, None


def vocab_stats(logits_BTV: torch.Tensor, ids_BTK: torch.Tensor, *, temperature: float = 1.0,
                chunk_size: Optional[int] = None, tp_group=None,
                num_excluded: int = 0) -> VocabStats:
    """One chunked pass over the logits: global logsumexp, logits at ``ids_BTK`` and, when
    ``num_excluded`` > 0, the logsumexp of the vocabulary without ``ids_BTK[..., :num_excluded]``.

    Differentiable in ``logits_BTV``. ``chunk_size`` is positions along T per chunk (None: about
    ``CHUNK_ELEMENTS`` fp32 elements). ``ids_BTK`` are global int64 ids in [0, V_global).
    """
    if logits_BTV.dim() != 3 or ids_BTK.dim() != 3 or ids_BTK.shape[:2] != logits_BTV.shape[:2]:
        raise ValueError(f"vocab_stats wants logits [B,T,V] and ids [B,T,K]; got "
                         f"{tuple(logits_BTV.shape)} and {tuple(ids_BTK.shape)}")
    if not 0 <= num_excluded <= ids_BTK.shape[-1]:
        raise ValueError(f"num_excluded={num_excluded} not in [0, K={ids_BTK.shape[-1]}]")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _, global_vocab = _shard_info(logits_BTV.shape[-1], tp_group)
    if ids_BTK.numel() and (int(ids_BTK.min()) < 0 or int(ids_BTK.max()) >= global_vocab):
        raise ValueError(f"token ids must lie in [0, {global_vocab}); got "
                         f"[{int(ids_BTK.min())}, {int(ids_BTK.max())}]")
    lse, picked, tail = _VocabStatsFn.apply(logits_BTV, ids_BTK.long(), float(temperature),
                                            chunk_size, tp_group, int(num_excluded))
    return VocabStats(lse_BT=lse, picked_BTK=picked, tail_lse_BT=tail if num_excluded else None)


def sampled_token_logprobs(logits_BTV: torch.Tensor, token_ids_BT: torch.Tensor, *,
                           temperature: float = 1.0, chunk_size: Optional[int] = None,
                           tp_group=None) -> torch.Tensor:
    """[B, T] ``log_softmax(logits / temperature)[b, t, token_ids[b, t]]`` in fp32 (fp64 for
    fp64 logits).

    The caller aligns: pass ``logits[:, :-1]`` with ``token_ids[:, 1:]``. Never materialises fp32
    [B, T, V] (see the module docstring); with ``tp_group`` the logits are the local vocabulary
    shard and the ids global, and the result equals the unsharded one.
    """
    if token_ids_BT.shape != logits_BTV.shape[:2]:
        raise ValueError(f"token_ids {tuple(token_ids_BT.shape)} must match logits [B, T] = "
                         f"{tuple(logits_BTV.shape[:2])}")
    stats = vocab_stats(logits_BTV, token_ids_BT.unsqueeze(-1), temperature=temperature,
                        chunk_size=chunk_size, tp_group=tp_group)
    return stats.picked_BTK.squeeze(-1) - stats.lse_BT
