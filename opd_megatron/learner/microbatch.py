"""Splitting a TrainBatch into this data-parallel rank's microbatches by a token budget.

Every rank receives the same full batch (the loop is SPMD); each DP rank keeps a contiguous
slice of rows. Columns after the last trained position of the whole batch are dropped (a
causal model's outputs there never reach the loss), then rows are grouped
``microbatch_tokens // S`` at a time. All microbatches share one shape, as Megatron's pipeline
schedule requires, so the last one is topped up with all-padding rows whose mask is zero.

The loss is a global mean, not a mean of per-microbatch means: ``norm_count`` gives the
denominator each microbatch contributes (response tokens for token_mean, rows for seq_mean),
and Megatron's per-token-loss mode divides summed gradients by the total over all
microbatches and DP ranks. So TP, PP, DP and microbatch size never change the loss.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import torch

from opd_megatron.errors import ConfigError
from opd_megatron.types import TrainBatch

_ROW_FIELDS = ("token_ids", "response_mask", "sampler_logprobs", "advantages",
               "teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")


def check_batch(batch: TrainBatch) -> None:
    shape = tuple(batch.token_ids.shape)
    if batch.token_ids.dim() != 2 or shape[0] == 0 or shape[1] < 2:
        raise ConfigError(f"TrainBatch.token_ids must be [B, S] with B >= 1, S >= 2; got {shape}")
    for name in _ROW_FIELDS[1:]:
        value = getattr(batch, name)
        if value is not None and tuple(value.shape[:2]) != shape:
            raise ConfigError(f"TrainBatch.{name} has shape {tuple(value.shape)}, "
                              f"token_ids has {shape}")


def trained_length(batch: TrainBatch) -> int:
    """Columns that matter: up to the last position with a nonzero mask (at least 2)."""
    cols = torch.nonzero(batch.response_mask.sum(0) != 0)
    return max(2, int(cols[-1]) + 1 if len(cols) else 2)


def _map_rows(batch: TrainBatch, fn) -> TrainBatch:
    changes = {name: fn(getattr(batch, name)) for name in _ROW_FIELDS
               if getattr(batch, name) is not None}
    if batch.group_ids.numel():
        changes["group_ids"] = fn(batch.group_ids)
    return dataclasses.replace(batch, **changes)


def slice_batch(batch: TrainBatch, rows: slice, num_cols: Optional[int] = None) -> TrainBatch:
    cols = slice(None) if num_cols is None else slice(0, num_cols)
    return _map_rows(batch, lambda t: t[rows] if t.dim() == 1 else t[rows, cols])


def _pad_rows(batch: TrainBatch, num_rows: int, pad_id: int) -> TrainBatch:
    have = batch.token_ids.shape[0]
    if num_rows == have:
        return batch

    def pad(t: torch.Tensor) -> torch.Tensor:
        filler = torch.zeros((num_rows - have,) + tuple(t.shape[1:]), dtype=t.dtype)
        if t is batch.token_ids:
            filler.fill_(pad_id)
        return torch.cat([t, filler.to(t.device)], dim=0)

    return _map_rows(batch, pad)


def dp_row_range(num_rows: int, dp: int, dp_rank: int) -> slice:
    """Contiguous, as-even-as-possible share of rows for one DP rank (may be empty)."""
    base, extra = divmod(num_rows, dp)
    start = dp_rank * base + min(dp_rank, extra)
    return slice(start, start + base + (1 if dp_rank < extra else 0))


def split_microbatches(batch: TrainBatch, *, microbatch_tokens: int, dp: int, dp_rank: int,
                       pad_id: int = 0) -> List[TrainBatch]:
    """This DP rank's microbatches, all [rows_per_microbatch, S] (see the module docstring)."""
    check_batch(batch)
    seq_len = trained_length(batch)
    rows_per_mb = max(1, microbatch_tokens // seq_len)
    local = slice_batch(batch, dp_row_range(batch.token_ids.shape[0], dp, dp_rank), seq_len)
    num_local = local.token_ids.shape[0]
    rows_per_mb = min(rows_per_mb, max(1, -(-batch.token_ids.shape[0] // dp)))
    num_mb = max(1, -(-num_local // rows_per_mb))
    local = _pad_rows(local, num_mb * rows_per_mb, pad_id)
    return [slice_batch(local, slice(i * rows_per_mb, (i + 1) * rows_per_mb))
            for i in range(num_mb)]


def norm_count(mask: torch.Tensor, loss_norm: str) -> int:
    """Denominator units of a (micro)batch: response tokens (token_mean) or rows (seq_mean)."""
    if loss_norm == "seq_mean":
        return int((mask.sum(-1) > 0).sum().item())
    return int((mask != 0).sum().item())
