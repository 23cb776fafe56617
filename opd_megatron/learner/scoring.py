"""Forward-only scoring of a TrainBatch: per-token logprobs and full-vocabulary logits.

Shared by the learner (recompute, logits for full-vocab KL) and the frozen teacher. Outputs
follow the TrainBatch convention: entry [b, s] is about token_ids[b, s] predicted from
token_ids[b, :s]; position 0 (no prefix) and positions off the response are 0.
"""

from __future__ import annotations

from typing import List

import torch

from opd_megatron.learner import cpu_compat
from opd_megatron.learner.forward import (
    gather_rows,
    pad_columns,
    real_vocab_logits,
    run_schedule,
    tp_group_or_none,
)
from opd_megatron.learner.microbatch import split_microbatches, trained_length
from opd_megatron.learner.parallel import Ranks, device
from opd_megatron.learner.qwen3 import Qwen3Arch
from opd_megatron.objective import sampled_token_logprobs
from opd_megatron.types import TrainBatch


def _gather_full_vocab(logits: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    if ranks.tp == 1:
        return logits
    return gather_from_tensor_model_parallel_region(logits.contiguous())


def aligned_logprobs(logits: torch.Tensor, mb: TrainBatch, *, temperature: float,
                     ranks: Ranks) -> torch.Tensor:
    """[b, S] logprob of token s under the distribution at position s-1 (0 at s=0 / off mask)."""
    tokens = mb.token_ids.to(logits.device)
    lp = sampled_token_logprobs(logits[:, :-1], tokens[:, 1:], temperature=temperature,
                                tp_group=tp_group_or_none(ranks))
    out = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    return torch.where(mb.response_mask.to(out.device) != 0, out, torch.zeros_like(out))


class Scorer:
    """Forward-only passes over a model built by a subclass (``self.model``, ``self.arch``,
    ``self.ranks``, ``self.microbatch_tokens``, ``self.pad_id``, ``self.num_tokens``)."""

    model: torch.nn.Module
    arch: Qwen3Arch
    ranks: Ranks
    microbatch_tokens: int
    pad_id: int = 0
    num_tokens: int = 0
    """The tokenizer's token count; output rows from it on (a padded embedding, as Qwen3's
    151,936 rows for 151,669 tokens) are no token and are masked out of every distribution.
    0 = every row is a token."""

    @property
    def token_width(self) -> int:
        """Width of the distributions the scorer returns: the real tokens only."""
        return min(self.num_tokens or self.arch.vocab_size, self.arch.vocab_size)

    def _microbatches(self, batch: TrainBatch) -> List[TrainBatch]:
        return split_microbatches(batch, microbatch_tokens=self.microbatch_tokens,
                                  dp=self.ranks.dp, dp_rank=self.ranks.dp_rank, pad_id=self.pad_id)

    def _forward_rows(self, batch: TrainBatch, row_fn) -> torch.Tensor | None:
        """Concatenated ``row_fn(logits, mb)`` over this rank's microbatches (last stage)."""
        rows: List[torch.Tensor] = []

        def loss_fn(mb, logits):
            logits = real_vocab_logits(logits, self.token_width, self.ranks)
            with torch.no_grad():
                rows.append(row_fn(logits, mb).detach())
            zero = logits.sum() * 0.0
            return zero, torch.tensor(0, dtype=torch.int, device=device()), {}

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                run_schedule(self.model, self._microbatches(batch), loss_fn, forward_only=True)
        finally:
            self.model.train(was_training)
        return torch.cat(rows, dim=0) if rows else None

    @cpu_compat.scoped
    def logprobs(self, batch: TrainBatch, *, temperature: float = 1.0) -> torch.Tensor:
        """[B, S] float32 logprobs of the batch's tokens (see the module docstring)."""
        local = self._forward_rows(
            batch, lambda logits, mb: aligned_logprobs(logits, mb, temperature=temperature,
                                                       ranks=self.ranks).float())
        num_rows, seq_len = batch.token_ids.shape
        full = gather_rows(local, num_rows=num_rows, row_shape=(trained_length(batch),),
                           dtype=torch.float32, ranks=self.ranks)
        return pad_columns(full, seq_len)

    @cpu_compat.scoped
    def logits(self, batch: TrainBatch) -> torch.Tensor:
        """[B, S, V] full-vocabulary logits aligned with tokens: out[b, s] is the distribution
        that predicts token_ids[b, s] (raw, before temperature); out[b, 0] = 0."""
        def rows(logits, mb):
            full = _gather_full_vocab(logits, self.ranks)[..., : self.token_width].float()
            return torch.cat([torch.zeros_like(full[:, :1]), full[:, :-1]], dim=1)

        local = self._forward_rows(batch, rows)
        num_rows, seq_len = batch.token_ids.shape
        full = gather_rows(local, num_rows=num_rows,
                           row_shape=(trained_length(batch), self.token_width),
                           dtype=torch.float32, ranks=self.ranks)
        return pad_columns(full, seq_len)
