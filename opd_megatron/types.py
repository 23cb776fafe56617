"""Data passed between stages. Per-token alignment is where distillation silently breaks,
so every per-token field states what index t refers to.

Convention for response-level lists (``Rollout``): index t refers to response token t,
``response_ids[t]``. Convention for packed tensors (``TrainBatch``): shape [B, S] aligned with
``token_ids``; entry [b, s] refers to token ``token_ids[b, s]`` predicted from
``token_ids[b, :s]``; entries outside the response are 0 and masked out.

Which distribution the logprobs refer to: sampler logprobs are those of the distribution the
student sampled from (temperature-scaled when rollout.temperature != 1, as SGLang returns
them); the learner recomputes at the same temperature so the importance ratio compares like
with like; the teacher scores at objective.teacher_temperature (default 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class Rollout:
    """One sampled response to one prompt."""

    prompt_ids: List[int]
    """[P] prompt token ids."""
    response_ids: List[int]
    """[T] sampled response token ids (including a final EOS if one was sampled)."""
    sampler_logprobs: List[float]
    """[T] logprob of response token t under the sampler."""
    finish_reason: str = "length"
    """'stop' (EOS or stop string) or 'length'."""
    weight_version: int = 0
    """Version of the student weights that produced this sample."""
    group_id: int = 0
    """Index of the prompt within its step; samples of one prompt share it (GRPO groups)."""
    answer: Optional[str] = None
    """Verifiable answer of the prompt, when the task has one."""
    teacher_logprobs: Optional[List[float]] = None
    """[T] logprob of response token t under the teacher, at the teacher temperature."""
    teacher_topk_ids: Optional[List[List[int]]] = None
    """[T][K] the teacher's top-k token ids at the position of response token t."""
    teacher_topk_logprobs: Optional[List[List[float]]] = None
    """[T][K] their teacher logprobs."""
    reward: Optional[float] = None
    """Sequence-level environment reward (e.g. 1.0 if the final answer is right)."""


@dataclass
class TrainBatch:
    """A packed, right-padded learner batch. All tensors [B, S] unless stated."""

    token_ids: torch.Tensor
    """[B, S] int64 prompt + response tokens, padded with pad id."""
    response_mask: torch.Tensor
    """[B, S] float 1.0 where token_ids[b, s] is a response token that is trained on."""
    sampler_logprobs: torch.Tensor
    """[B, S] logprob of token_ids[b, s] under the sampler (0 off the response)."""
    advantages: torch.Tensor
    """[B, S] per-token advantage of token_ids[b, s] (0 off the response; unused by sft)."""
    group_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """[B] prompt index of each row."""
    teacher_logprobs: Optional[torch.Tensor] = None
    """[B, S] teacher logprob of token_ids[b, s], when scored."""
    teacher_topk_ids: Optional[torch.Tensor] = None
    """[B, S, K] int64 the teacher's top-k token ids at the position predicting token_ids[b, s]."""
    teacher_topk_logprobs: Optional[torch.Tensor] = None
    """[B, S, K] their teacher logprobs (K = vocab size means the full distribution)."""

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum().item())
