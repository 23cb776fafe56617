"""Prompt sources: what the student is asked each step, with a resumable cursor.

A ``PromptSource`` yields ``Prompt`` records in a fixed order set by the run seed; its
``cursor`` (prompts consumed) is saved in checkpoints so a resumed run continues the same
stream. The generated sources need no files: ``arithmetic`` (the reasoning task),
``instruct`` (the same problems under IF-eval style format instructions) and ``midtrain``
(documents of new facts mixed with instruct samples; opd_megatron.data.knowledge). The
dataset sources (jsonl, parquet, disk, hf; opd_megatron.data.dataset) stream the training rows
of their held-out split (opd_megatron.data.tasks), shuffled by the seed and repeated in that
order when they run out. A run gets its source from its task (``tasks.make_task``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional

from opd_megatron.config.schema import DataConfig
from opd_megatron.errors import ConfigError
from opd_megatron.data import arithmetic, knowledge


@dataclass(frozen=True)
class Prompt:
    text: str
    """Prompt text before the chat template."""
    answer: Optional[str] = None
    """Verifiable answer, if any."""
    reference: Optional[str] = None
    """Reference solution (the generated task's trace), for sft with data.sft_targets=reference."""


def heldout_prompts(data: DataConfig, num: int) -> List[Prompt]:
    """The in-loop evaluation prompts; instruct and midtrain runs are evaluated on the
    instruct task (the behaviour mid-training must not lose)."""
    if data.source in ("instruct", "midtrain"):
        return [Prompt(i.prompt, i.answer, i.reference) for i in
                knowledge.heldout_instructions(data.num_heldout, data.min_ops, data.max_ops)[:num]]
    if data.source != "arithmetic":
        raise ConfigError(f"data.source: the held-out rows of '{data.source}' come from its task "
                          f"(opd_megatron.data.tasks.make_task)")
    probs = arithmetic.heldout_problems(data.num_heldout, data.min_ops, data.max_ops)[:num]
    return [Prompt(p.prompt, p.answer, p.solution) for p in probs]


class PromptSource:
    """Training prompts in seed order; ``take(n)`` advances ``cursor`` by n. ``records``: the
    training rows of a dataset source (its task's, held-out rows removed)."""

    def __init__(self, data: DataConfig, seed: int, cursor: int = 0,
                 records: Optional[List[Prompt]] = None):
        self.data, self.seed = data, seed
        self._records: Optional[List[Prompt]] = None
        if data.source == "midtrain":
            self._facts = knowledge.facts(data.facts_seed, data.num_facts)
            self._replayed = [f for seed in data.replay_facts_seeds
                              for f in knowledge.facts(seed, data.num_facts)]
            self._heldout = {p.prompt for p in arithmetic.heldout_problems(data.num_heldout, data.min_ops,
                                                                          data.max_ops)}
        elif data.source not in ("arithmetic", "instruct"):
            if records is None:
                raise ValueError(f"PromptSource: data.source={data.source} streams its task's training rows; "
                                 f"build it with opd_megatron.data.tasks.make_task")
            self._records = list(records)
            random.Random(seed).shuffle(self._records)
        self.seek(cursor)

    def seek(self, cursor: int) -> None:
        """Continue the stream after ``cursor`` prompts (a checkpoint's data cursor)."""
        self.cursor = cursor
        if self._records is None and self.data.source != "midtrain":
            d = self.data
            heldout = arithmetic.heldout_problems(d.num_heldout, d.min_ops, d.max_ops)
            self._stream = arithmetic.train_problems(self.seed, heldout, d.min_ops, d.max_ops,
                                                     start=cursor)


    def take(self, num: int) -> List[Prompt]:
        first, self.cursor = self.cursor, self.cursor + num
        if self.data.source == "midtrain":
            return [self._midtrain(first + i) for i in range(num)]
        if self.data.source == "instruct":
            kinds = list(knowledge.KINDS)
            out = [knowledge.instruct(next(self._stream), kinds[(first + i) % len(kinds)]) for i in range(num)]
            return [Prompt(i.prompt, i.answer, i.reference) for i in out]
        if self._records is None:
            return [Prompt(p.prompt, p.answer, p.solution) for p in (next(self._stream) for _ in range(num))]
        recs = self._records
        return [recs[(first + i) % len(recs)] for i in range(num)]

    def _midtrain(self, index: int) -> Prompt:
        """Sample ``index`` of the mid-training stream: a document of facts, or (with
        probability data.chat_ratio) an instruct sample off the held-out split. A document
        holds facts of an earlier set with probability data.replay_ratio."""
        d = self.data
        rng = random.Random(f"midtrain:{self.seed}:{d.facts_seed}:{index}")
        if rng.random() < d.chat_ratio:
            kinds = list(knowledge.KINDS)
            while True:
                p = arithmetic.random_problem(rng, d.min_ops, d.max_ops)
                if p.prompt not in self._heldout:
                    i = knowledge.instruct(p, kinds[index % len(kinds)])
                    return Prompt(i.prompt, i.answer, i.reference)
        pool = self._facts
        if d.replay_ratio > 0 and rng.random() < d.replay_ratio:  # no draw without replay: same stream
            pool = self._replayed
        head, rest = knowledge.document(rng.sample(pool, min(d.facts_per_document, len(pool))))
        return Prompt(head, None, rest)


def encode_prompt(tokenizer, text: str, chat_template: str, thinking: Optional[bool] = None) -> List[int]:
    """Token ids of a prompt, optionally through the tokenizer's chat template; ``thinking`` is the
    template's ``enable_thinking`` (Qwen3's thinking mode), None leaving the template's default."""
    if chat_template == "tokenizer":
        extra = {} if thinking is None else {"enable_thinking": thinking}
        # return_dict=False: transformers 5 returns a BatchEncoding otherwise (list() of it: its keys)
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False, **extra))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
