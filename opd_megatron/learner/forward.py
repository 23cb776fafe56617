"""Running a GPTModel over microbatches with Megatron's schedules, shared by the learner and
the frozen teacher, and collecting per-row results onto every rank.

Results computed on the last pipeline stage (per-row logprobs, logits) are trimmed of the
all-padding filler rows, all-gathered over data parallelism, then broadcast from the last
stage over the pipeline group, so every rank returns the same full-batch tensor: the caller
(the SPMD loop) never needs to know which rank holds what.
"""

from __future__ import annotations

import functools
from typing import Callable, List

import torch
import torch.distributed as dist

from opd_megatron.learner.microbatch import dp_row_range
from opd_megatron.learner.parallel import Ranks, device
from opd_megatron.types import TrainBatch

_PAD_LOGIT = -1.0e30
"""Logit given to the zero rows Megatron's vocab padding adds (see qwen3.padded_vocab_size):
finite, so p*log(p) terms stay 0 instead of NaN, yet exp() of it is exactly 0."""


def causal_inputs(token_ids: torch.Tensor):
    """Position ids [B, S] and Megatron's boolean causal mask [1, 1, S, S] (True = hidden).

    Right padding needs no padding mask: pad positions come after every trained token."""
    num_rows, seq_len = token_ids.shape
    pos = torch.arange(seq_len, device=token_ids.device).unsqueeze(0).expand(num_rows, seq_len)
    mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=token_ids.device), 1)
    return pos, mask.view(1, 1, seq_len, seq_len)


def real_vocab_logits(logits: torch.Tensor, vocab_size: int, ranks: Ranks) -> torch.Tensor:
    """Drop (TP=1) or mask (TP>1: shards must stay equal) the padded vocabulary columns."""
    if ranks.tp == 1:
        return logits[..., :vocab_size]
    local = logits.shape[-1]
    start = ranks.tp_rank * local
    if start + local <= vocab_size:
        return logits
    ids = torch.arange(start, start + local, device=logits.device)
    value = _PAD_LOGIT if logits.dtype != torch.float16 else -1.0e4
    return logits.masked_fill(ids >= vocab_size, value)


def tp_group_or_none(ranks: Ranks):
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group() if ranks.tp > 1 else None


def run_schedule(model, microbatches: List[TrainBatch], loss_fn: Callable, *,
                 forward_only: bool) -> List[dict]:
    """Megatron forward(-backward) over the microbatches; ``loss_fn(mb, logits)`` returns
    (loss_sum, count_int_tensor, report_dict). Returns the report dicts (last stage only)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    dev = device()

    def forward_step(data_iterator, chunk):
        mb = next(data_iterator)
        tokens = mb.token_ids.to(dev)
        pos, mask = causal_inputs(tokens)
        return chunk(tokens, pos, mask), functools.partial(loss_fn, mb)

    num_rows, seq_len = microbatches[0].token_ids.shape
    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(microbatches), model=[model],
        num_microbatches=len(microbatches), seq_length=seq_len, micro_batch_size=num_rows,
        decoder_seq_length=seq_len, forward_only=forward_only)


def gather_rows(local_rows: torch.Tensor | None, *, num_rows: int, row_shape: tuple,
                dtype: torch.dtype, ranks: Ranks) -> torch.Tensor:
    """Full-batch [num_rows, *row_shape] on every rank from each DP rank's last-stage rows."""
    from megatron.core import parallel_state as ps

    dev = device()
    max_local = -(-num_rows // ranks.dp)
    buf = torch.zeros((max_local,) + tuple(row_shape), dtype=dtype, device=dev)
    if ranks.is_last_stage:
        have = len(range(num_rows)[dp_row_range(num_rows, ranks.dp, ranks.dp_rank)])
        buf[:have] = local_rows[:have].to(device=dev, dtype=dtype)
        if ranks.dp > 1:
            parts = [torch.empty_like(buf) for _ in range(ranks.dp)]
            dist.all_gather(parts, buf, group=ps.get_data_parallel_group())
        else:
            parts = [buf]
        sizes = [len(range(num_rows)[dp_row_range(num_rows, ranks.dp, r)]) for r in range(ranks.dp)]
        full = torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)
    else:
        full = torch.empty((num_rows,) + tuple(row_shape), dtype=dtype, device=dev)
    if ranks.pp > 1:
        dist.broadcast(full, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
    return full.cpu()


def pad_columns(rows: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Right-pad dim 1 with zeros back to the batch's full length."""
    if rows.shape[1] == seq_len:
        return rows
    pad = torch.zeros((rows.shape[0], seq_len - rows.shape[1]) + tuple(rows.shape[2:]),
                      dtype=rows.dtype)
    return torch.cat([rows, pad], dim=1)
