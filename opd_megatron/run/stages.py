"""The stages of one step, as callables over the run's servers (or the teacher inside Megatron):
sample (student rollouts, teacher samples or reference solutions), score, reward, sync."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, List, Optional

from opd_megatron import faults
from opd_megatron.config.schema import Config
from opd_megatron.data import Prompt, PromptSource, encode_prompt
from opd_megatron.errors import RuntimeFailure
from opd_megatron.methods import method_of
from opd_megatron.objective.batching import pack_rollouts
from opd_megatron.run.servers import Servers
from opd_megatron.types import Rollout

MAX_STALENESS = 0
"""Weight versions a training rollout may lag the last push by (0: the synchronous loop)."""


class Stages:
    def __init__(self, cfg: Config, tokenizer: Any, servers: Servers, prompts: PromptSource,
                 frozen_teacher: Any = None, grade: Optional[Callable[[str, Optional[str]], float]] = None):
        """``prompts``: the task's training prompts; ``grade``: the task's reward
        (``Task.reward``: response text, answer -> float), for the reward and the eval accuracy."""
        self.cfg, self.tokenizer, self.servers, self.prompts = cfg, tokenizer, servers, prompts
        self.frozen_teacher = frozen_teacher
        self.grade = grade
        self.num_scored = 0
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.eos_id = response_eos_id(tokenizer, cfg.data.eos_token)
        # data.eos_token set: sampling stops on it too (SGLang also stops on the model's eos)
        self.stop_token_ids = [self.eos_id] if cfg.data.eos_token else None

    @property
    def can_score(self) -> bool:
        """A teacher is there to score: SGLang teacher servers or the frozen Megatron teacher."""
        return self.servers.teacher is not None or self.frozen_teacher is not None

    def encode(self, prompts: List[Prompt]) -> List[List[int]]:
        return [encode_prompt(self.tokenizer, p.text, self.cfg.data.chat_template) for p in prompts]

    def sample(self, prompts: List[Prompt], *, client=None, temperature=None, samples=None,
               max_new_tokens=None, seed_offset: int = 0) -> List[Rollout]:
        """Responses from ``client`` (default: the student on-policy, the teacher for sft);
        ``seed_offset`` 0 is a training step, other values are the evaluations."""
        r, cfg, s = self.cfg.rollout, self.cfg, self.servers
        if client is None:
            client = s.student if method_of(cfg.objective).on_policy else s.teacher
        role = "teacher" if client is s.teacher else "student"
        call = s.teacher_call if role == "teacher" else s.call
        step = self.prompts.cursor // r.prompts_per_step
        with faults.server_kill(role if seed_offset == 0 else None, step, s.first_pid(role)):
            rollouts = call(lambda: client.generate(
                self.encode(prompts), samples_per_prompt=samples or r.samples_per_prompt,
                max_new_tokens=max_new_tokens or r.max_new_tokens,
                temperature=r.temperature if temperature is None else temperature,
                top_p=r.top_p, top_k=r.top_k, seed=sampling_seed(cfg.run.seed, self.prompts.cursor, seed_offset),
                stop_token_ids=self.stop_token_ids))
        for ro in rollouts:
            ro.answer = prompts[ro.group_id].answer
        if seed_offset == 0 and role == "student":
            check_weight_versions(rollouts, s.synced_version)
        return rollouts

    def sample_and_score(self, prompts: List[Prompt],
                         busy: Optional[Callable[[str, float], None]] = None) -> List[Rollout]:
        """rollout.stream_chunks = N >= 2: the step's prompts go out as N contiguous batches, batch j to
        student server j mod S, and each batch is scored on teacher server j mod T as soon as it is
        sampled, so scoring overlaps the sampling of the rest. Each server takes its batches in
        index order (batch j waits for batch j-S, or j-T, on the same server), so what each server
        computes, and the result, does not depend on which batch finishes first; the per-request
        seeds are those of the unchunked batch. ``busy(role, seconds)`` gets each server batch's time."""
        import asyncio
        import time

        r, o, s = self.cfg.rollout, self.cfg.objective, self.servers
        if r.stream_chunks == 1:
            return self._stream_each_rollout(prompts, busy)
        ids, G, n = self.encode(prompts), r.samples_per_prompt, r.stream_chunks
        edges = [round(k * len(prompts) / n) for k in range(n + 1)]
        seed = sampling_seed(self.cfg.run.seed, self.prompts.cursor, 0)
        top_k = o.teacher_top_k if o.kl_estimator == "full_vocab" else 0
        S, T = len(s.student.urls), len(s.teacher.urls)

        async def stream() -> List[Rollout]:
            sampled, scored = [asyncio.Event() for _ in range(n)], [asyncio.Event() for _ in range(n)]
            out: List[List[Rollout]] = [[] for _ in range(n)]

            async def batch(j: int) -> None:
                lo, hi = edges[j], edges[j + 1]
                if j >= S:
                    await sampled[j - S].wait()
                t0 = time.perf_counter()
                part = await s.student.only(j).agenerate(
                    ids[lo:hi], samples_per_prompt=G, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                    top_p=r.top_p, top_k=r.top_k, seed=seed + lo * G, stop_token_ids=self.stop_token_ids)
                if busy:
                    busy("student", time.perf_counter() - t0)
                sampled[j].set()
                for ro in part:
                    ro.group_id += lo
                    ro.answer = prompts[ro.group_id].answer
                if j >= T:
                    await scored[j - T].wait()
                t0 = time.perf_counter()
                await s.aflush_teacher(j)
                await s.teacher.only(j).ascore(part, temperature=o.teacher_temperature, top_k=top_k)
                if busy:
                    busy("teacher", time.perf_counter() - t0)
                scored[j].set()
                out[j] = part

            await asyncio.gather(*(batch(j) for j in range(n) if edges[j] < edges[j + 1]))
            return [ro for part in out for ro in part]

        rollouts = s.call(lambda: asyncio.run(stream()))
        check_weight_versions(rollouts, s.synced_version)
        self._after_score(rollouts)
        return rollouts

    def _stream_each_rollout(self, prompts: List[Prompt],
                             busy: Optional[Callable[[str, float], None]] = None) -> List[Rollout]:
        """rollout.stream_chunks = 1: the step's batch goes out as the synchronous loop sends it (one
        batched request per student server, the same seeds), streamed, so each rollout comes back
        as soon as it finishes and goes straight to a teacher server. Each teacher server scores one
        rollout at a time, its prefix cache flushed first (engines.flush_teacher_cache), so a score
        depends on that rollout alone, never on which others shared a request or came before it:
        CPU SGLang's scores move in the last bits with the batch they are computed in. The rollouts
        are put back in the batch's order, so a seeded run is the same whatever the arrival order."""
        import asyncio
        import time

        r, o, s = self.cfg.rollout, self.cfg.objective, self.servers
        top_k = o.teacher_top_k if o.kl_estimator == "full_vocab" else 0
        seed = sampling_seed(self.cfg.run.seed, self.prompts.cursor, 0)

        async def stream() -> List[Rollout]:
            out: List[Optional[Rollout]] = [None] * (len(prompts) * r.samples_per_prompt)
            finished: asyncio.Queue = asyncio.Queue()  # rollouts to score; None: sampling ended

            async def sample() -> None:
                t0 = time.perf_counter()
                try:
                    async for k, ro in s.student.astream(
                            self.encode(prompts), samples_per_prompt=r.samples_per_prompt,
                            max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                            top_k=r.top_k, seed=seed, stop_token_ids=self.stop_token_ids):
                        ro.answer = prompts[ro.group_id].answer
                        out[k] = ro
                        finished.put_nowait(ro)
                finally:
                    finished.put_nowait(None)
                if busy:
                    busy("student", time.perf_counter() - t0)

            async def score(t: int) -> None:
                while (ro := await finished.get()) is not None:
                    t0 = time.perf_counter()
                    await s.aflush_teacher(t)
                    await s.teacher.only(t).ascore([ro], temperature=o.teacher_temperature, top_k=top_k)
                    if busy:
                        busy("teacher", time.perf_counter() - t0)
                finished.put_nowait(None)  # for the other teacher servers' loops

            await asyncio.gather(sample(), *(score(t) for t in range(len(s.teacher.urls))))
            return list(out)

        rollouts = s.call(lambda: asyncio.run(stream()))
        check_weight_versions(rollouts, s.synced_version)
        self._after_score(rollouts)
        return rollouts

    def sample_reference(self, prompts: List[Prompt]) -> List[Rollout]:
        """sft on the task's reference solutions: the 'samples' are the references + the
        response end (data.eos_token, default the tokenizer's eos)."""
        eos = self.eos_id
        out = []
        for i, (p, ids) in enumerate(zip(prompts, self.encode(prompts))):
            resp = list(self.tokenizer(p.reference, add_special_tokens=False)["input_ids"]) + [eos]
            out.append(Rollout(prompt_ids=ids, response_ids=resp, sampler_logprobs=[0.0] * len(resp),
                               finish_reason="stop", group_id=i, answer=p.answer))
        return out

    def score(self, rollouts: List[Rollout]) -> None:
        """Training scoring: teacher logprobs (and top-k for kl_estimator=full_vocab) in place."""
        o = self.cfg.objective
        top_k = o.teacher_top_k if o.kl_estimator == "full_vocab" else 0
        with faults.server_kill("teacher", self.prompts.cursor // self.cfg.rollout.prompts_per_step,
                                self.servers.first_pid("teacher")):
            self.teacher_score(rollouts, temperature=o.teacher_temperature, top_k=top_k)
        self._after_score(rollouts)

    def _after_score(self, rollouts: List[Rollout]) -> None:
        self.num_scored += 1
        for kind, value in (("teacher_nan", float("nan")), ("teacher_inf", float("-inf"))):
            if faults.poisoned(kind, self.num_scored):
                _poison(rollouts[0], value)

    def teacher_score(self, rollouts: List[Rollout], *, temperature: float, top_k: int) -> None:
        """Teacher logprobs of every response token, from the SGLang teacher or the frozen
        Megatron teacher (both fill the same Rollout fields)."""
        if self.frozen_teacher is None:
            teacher = self.servers.teacher
            self.servers.teacher_call(lambda: teacher.score(rollouts, temperature=temperature, top_k=top_k))
            return
        import torch

        batch = pack_rollouts(rollouts, self.pad_id)
        logp_BSV = torch.log_softmax(self.frozen_teacher.logits(batch) / temperature, dim=-1)
        for b, r in enumerate(rollouts):
            P, T = len(r.prompt_ids), len(r.response_ids)
            rows_TV = logp_BSV[b, P:P + T]
            ids_T = torch.tensor(r.response_ids, dtype=torch.long)
            r.teacher_logprobs = rows_TV.gather(-1, ids_T[:, None]).squeeze(-1).tolist()
            if top_k:
                vals, idx = rows_TV.topk(min(top_k, rows_TV.shape[-1]), dim=-1)
                r.teacher_topk_ids, r.teacher_topk_logprobs = idx.tolist(), vals.tolist()

    def reward(self, rollouts: List[Rollout]) -> None:
        """Rollout.reward of each response: the task's grade of its text against its answer."""
        assert self.grade is not None, "Stages built without the task's grade"
        for ro in rollouts:
            text = self.tokenizer.decode(ro.response_ids, skip_special_tokens=True)
            ro.reward = float(self.grade(text, ro.answer))

    def sync(self, version: int) -> None:
        self.servers.push(version)


def response_eos_id(tokenizer: Any, eos_token: Optional[str]) -> int:
    """Id of the token that ends every response: ``data.eos_token`` (checked by preflight to
    be one token of both tokenizers) or, unset, the tokenizer's eos."""
    if eos_token is None:
        return int(tokenizer.eos_token_id)
    return int(tokenizer.convert_tokens_to_ids(eos_token))


def check_weight_versions(rollouts: List[Rollout], pushed: int, max_staleness: int = MAX_STALENESS) -> None:
    """Every on-policy rollout was sampled by weights at most ``max_staleness`` versions behind
    the last push (and never ahead of it); else the weight sync silently failed."""
    for ro in rollouts:
        behind = pushed - ro.weight_version
        if not 0 <= behind <= max_staleness:
            raise RuntimeFailure(f"a rollout was sampled by weight version {ro.weight_version}, but version "
                                 f"{pushed} was pushed (at most {max_staleness} behind allowed): the student "
                                 "servers do not serve the learner's weights; see the server logs")


def sampling_seed(run_seed: int, cursor: int, purpose: int) -> int:
    """Base seed of one batch of requests (request j uses base + j): a 48-bit hash of the run
    seed, the data cursor and the purpose (training, eval accuracy, eval KL), so batches never
    share seeds and a resumed run draws exactly what the uninterrupted run drew."""
    digest = hashlib.sha256(f"{run_seed}:{cursor}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


def _poison(rollout: Rollout, value: float) -> None:
    rollout.teacher_logprobs = [value] * len(rollout.teacher_logprobs or [])
    if rollout.teacher_topk_logprobs:
        rollout.teacher_topk_logprobs = [[value] * len(row) for row in rollout.teacher_topk_logprobs]


__all__ = ["Stages", "check_weight_versions", "sampling_seed", "MAX_STALENESS"]
