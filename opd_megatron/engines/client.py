"""Async (and sync) client of SGLang servers: sample rollouts, score them with the teacher.

``generate`` returns ``Rollout``s (response ids, sampler logprobs, finish reason, weight
version); ``score`` fills ``Rollout.teacher_logprobs`` (index t scores response token t) and
optionally the teacher's top-k. Requests are spread round-robin over the role's server URLs
(or go to one router URL), at most ``max_concurrency`` in flight, each bounded by a timeout and
retried with backoff (see ``opd_megatron.engines.http``).

Teacher scoring is arranged so the teacher prefills each prompt once per group: every request
starts logprobs at the last prompt token (so a cached prompt can be reused), and for prompts
of at least ``min_shared_prompt_tokens`` the first sample of each group is scored first (its
prompt enters the radix cache), then the other G - 1 samples. ``logprob_start_len=0`` would
recompute the prompt for every sample (bench/engine_throughput.py measures both).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

import aiohttp

from opd_megatron.config.schema import EnginesConfig
from opd_megatron.engines import requests as req
from opd_megatron.engines.http import EngineUnavailable, RetryPolicy, get_json, post_json
from opd_megatron.errors import ConfigError
from opd_megatron.types import Rollout


@dataclass
class CacheStats:
    """Prefix-cache accounting summed over answers (SGLang's ``meta_info``)."""

    num_requests: int = 0
    prompt_tokens: int = 0
    """Tokens sent as input (``meta_info.prompt_tokens``)."""
    cached_tokens: int = 0
    """Of those, tokens served from the radix cache (``meta_info.cached_tokens``)."""
    completion_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def add(self, meta: Dict[str, Any]) -> None:
        self.num_requests += 1
        self.prompt_tokens += int(meta.get("prompt_tokens", 0))
        self.cached_tokens += int(meta.get("cached_tokens", 0))
        self.completion_tokens += int(meta.get("completion_tokens", 0))


@dataclass
class EngineClient:
    """Talks to the servers of one role (student or teacher)."""

    urls: List[str]
    """Server (or router) base URLs, e.g. ``http://127.0.0.1:31000``."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_concurrency: int = 64
    """Requests in flight at once, over all URLs."""
    api_key: Optional[str] = None
    full_vocab_size: Optional[int] = None
    """The tokenizer's token count (``len(tokenizer)``): needed to score at a teacher
    temperature other than 1, and to tell real ids from padded rows."""
    logits_width: Optional[int] = None
    """Rows of the served model's output layer (its ``config.json`` ``vocab_size``). When it
    exceeds ``full_vocab_size`` the ids in between are padding (Qwen3: 151,936 rows, 151,669
    tokens): sampling gives them ``PADDED_LOGIT_BIAS``, and teacher top-k asks for that many
    more entries and drops them (``requests.parse_score``)."""
    min_shared_prompt_tokens: int = 32
    """Groups whose prompt is at least this long are scored leader first, then the rest (the
    prompt is prefilled once, at the cost of a second round trip); shorter prompts go in one
    wave, where the extra round trip costs more than recomputing them (bench: 9-token prompts
    0.90x, 81-token prompts 1.64x)."""
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("engine client needs at least one server URL "
                              "(engines.<role>.urls or a launched server)")
        self.urls = [u.rstrip("/") for u in self.urls]

    @property
    def padded_ids(self) -> range:
        """Output-layer rows that are no token (empty unless both sizes are known)."""
        if not self.full_vocab_size or not self.logits_width:
            return range(0)
        return range(self.full_vocab_size, self.logits_width)

    @classmethod
    def from_config(cls, urls: Sequence[str], engines: EnginesConfig, *,
                    full_vocab_size: Optional[int] = None,
                    logits_width: Optional[int] = None) -> "EngineClient":
        from opd_megatron.engines.apikey import run_key

        api_key = run_key(engines)
        policy = RetryPolicy(request_timeout_s=engines.request_timeout_s,
                             max_retries=engines.max_retries)
        return cls(list(urls), policy=policy, max_concurrency=engines.max_concurrency,
                   api_key=api_key, full_vocab_size=full_vocab_size, logits_width=logits_width)

    def only(self, index: int) -> "EngineClient":
        """A client of this one's ``index``-th URL alone (same policy, key and cache stats)."""
        import dataclasses

        return dataclasses.replace(self, urls=[self.urls[index % len(self.urls)]], stats=self.stats)

    # -- plumbing -------------------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_concurrency))

    async def _post_many(self, path: str, payloads: List[Dict[str, Any]], *,
                         offset: int = 0) -> List[Any]:
        if path == "/generate" and payloads and all(
                p["sampling_params"].get("n", 1) == 1 for p in payloads):
            return await self._post_batched(path, payloads, offset=offset)
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(i: int, payload: Dict[str, Any], session: aiohttp.ClientSession) -> Any:
            async with limit:
                return await post_json(session, self.urls, path, payload, self.policy,
                                       first_url_index=offset + i, api_key=self.api_key)

        async with self._session() as session:
            return await asyncio.gather(*(one(i, p, session) for i, p in enumerate(payloads)))

    def _server_batches(self, payloads: List[Dict[str, Any]]) -> List[Tuple[int, List[Dict[str, Any]]]]:
        """``payloads`` as contiguous batches, at most one per server URL, each with its offset."""
        size = -(-len(payloads) // min(len(self.urls), len(payloads))) if payloads else 1
        return [(lo, payloads[lo:lo + size]) for lo in range(0, len(payloads), size)]

    async def _post_batched(self, path: str, payloads: List[Dict[str, Any]], *,
                            offset: int = 0) -> List[Any]:
        """One batched /generate request per server (contiguous chunks, order kept).

        Why: concurrent single requests reach the scheduler in a varying order, so batch
        composition, and with it the last bits of CPU logprobs, change from run to run; a batch
        request hands the scheduler the same requests in the same order every time."""
        chunks = [chunk for _, chunk in self._server_batches(payloads)]

        async def one(j: int, chunk: List[Dict[str, Any]], session: aiohttp.ClientSession) -> Any:
            answer = await post_json(session, self.urls, path, req.batch_payload(chunk), self.policy,
                                     first_url_index=offset + j, api_key=self.api_key)
            if not isinstance(answer, list) or len(answer) != len(chunk):
                raise req.EngineRequestError(f"SGLang server {self.urls[(offset + j) % len(self.urls)]} "
                                             f"answered a batch of {len(chunk)} with "
                                             f"{len(answer) if isinstance(answer, list) else 'one'} result(s)")
            return answer

        async with self._session() as session:
            answers = await asyncio.gather(*(one(j, c, session) for j, c in enumerate(chunks)))
        return [a for chunk_answers in answers for a in chunk_answers]

    async def apost_each(self, path: str, payload: Dict[str, Any]) -> List[Any]:
        """POST the same body to every URL (weight updates: the router does not pass them)."""
        async with self._session() as session:
            return await asyncio.gather(*(
                post_json(session, [url], path, payload, self.policy, api_key=self.api_key)
                for url in self.urls))

    async def apost_to(self, url: str, path: str, payload: Dict[str, Any], *,
                       max_retries: Optional[int] = None) -> Any:
        """POST to one server; ``max_retries=0`` for calls that must not be repeated."""
        policy = self.policy if max_retries is None else RetryPolicy(
            request_timeout_s=self.policy.request_timeout_s, max_retries=max_retries,
            backoff_s=self.policy.backoff_s)
        async with self._session() as session:
            return await post_json(session, [url], path, payload, policy, api_key=self.api_key)

    async def aflush_cache(self, wait_s: float = 60.0) -> None:
        """Empty every server's prefix (radix) cache; a server first waits up to ``wait_s`` for
        its running requests to finish (HTTP 400 if they do not)."""
        await self.apost_each(f"/flush_cache?timeout={wait_s:g}", {})

    def flush_cache(self, wait_s: float = 60.0) -> None:
        """Blocking ``aflush_cache``."""
        _run(self.aflush_cache(wait_s))

    async def aget(self, path: str, *, url: Optional[str] = None) -> Any:
        async with self._session() as session:
            return await get_json(session, url or self.urls[0], path,
                                  timeout_s=self.policy.request_timeout_s, api_key=self.api_key)

    # -- sampling -------------------------------------------------------------------------
    def _sample_requests(self, prompt_ids: List[List[int]], G: int, per_sample: bool, *,
                         seed: Optional[int], **sampling: Any) -> Tuple[List[Tuple[int, int]], List[Dict[str, Any]]]:
        """The /generate bodies of G samples per prompt: ``(prompt, sample)`` per request and the
        bodies, one request per sample (``per_sample``, each its own seed) or one n=G per prompt."""
        jobs = [(i, g) for i in range(len(prompt_ids)) for g in range(G if per_sample else 1)]
        payloads = [req.generate_payload(prompt_ids[i], samples_per_prompt=1 if per_sample else G,
                                         banned_ids=self.padded_ids,
                                         seed=None if seed is None else seed + i * G + g, **sampling)
                    for i, g in jobs]
        return jobs, payloads

    async def agenerate(self, prompt_ids: List[List[int]], *, samples_per_prompt: int = 1,
                        max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                        top_k: int = -1, seed: Optional[int] = None,
                        ignore_eos: bool = False,
                        stop_token_ids: Optional[List[int]] = None) -> List[Rollout]:
        """G samples per prompt, prompt-major (rollout ``i*G + g`` is sample g of prompt i);
        a sample also ends at any of ``stop_token_ids`` (kept as its last token)."""
        if samples_per_prompt < 1 or max_new_tokens < 1:
            raise ConfigError("rollout.samples_per_prompt and rollout.max_new_tokens must be >= 1")
        # With a seed, each sample is its own request with its own seed: SGLang gives the G
        # copies of an n=G request one seed, hence G identical samples. Without one, n=G lets
        # SGLang prefill the prompt once and fork it.
        G = samples_per_prompt
        per_sample = seed is not None and G > 1
        jobs, payloads = self._sample_requests(
            prompt_ids, G, per_sample, seed=seed, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, ignore_eos=ignore_eos,
            stop_token_ids=stop_token_ids)
        answers = await self._post_many("/generate", payloads)
        rollouts: List[Rollout] = []
        for (i, _), answer in zip(jobs, answers):
            for item in answer if isinstance(answer, list) else [answer]:
                self.stats.add(item["meta_info"])
            rollouts.extend(req.parse_generate(answer, prompt_ids[i], i, 1 if per_sample else G,
                                               self.urls[i % len(self.urls)]))
        return rollouts

    async def astream(self, prompt_ids: List[List[int]], *, samples_per_prompt: int = 1,
                      max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                      top_k: int = -1, seed: Optional[int] = None,
                      stop_token_ids: Optional[List[int]] = None) -> AsyncIterator[Tuple[int, Rollout]]:
        """``agenerate``'s rollouts, each yielded as soon as its sample finishes (finish order), as
        ``(k, rollout)``: k is its index in ``agenerate``'s list.

        The requests, their seeds and each server's batch are ``agenerate``'s (one batched
        /generate per server, contiguous chunks), sent with ``stream: true`` and a stream interval
        past ``max_new_tokens``, so a server sends each sample once, when it ends, tagged with its
        index in the batch; the rollouts are ``agenerate``'s bit for bit (measured on CPU SGLang),
        only their order differs (k puts them back). No retry: a server that fails mid-stream raises
        ``EngineUnavailable``. Needs one request per sample (``seed`` set, or one sample per prompt)."""
        G = samples_per_prompt
        if G > 1 and seed is None:
            raise ConfigError("astream: several samples per prompt need a seed (one request per sample)")
        jobs, payloads = self._sample_requests(
            prompt_ids, G, True, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, top_k=top_k, stop_token_ids=stop_token_ids)
        done: asyncio.Queue = asyncio.Queue()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

        async def one(j: int, lo: int, batch: List[Dict[str, Any]], session: aiohttp.ClientSession) -> None:
            url = self.urls[j]
            body = req.batch_payload(batch)
            body["stream"] = True
            for params in body["sampling_params"]:
                params["stream_interval"] = max_new_tokens + 1  # only the finished sample is sent
            timeout = aiohttp.ClientTimeout(total=self.policy.request_timeout_s)
            buffer = b""
            try:
                async with session.post(url + "/generate", json=body, timeout=timeout, headers=headers) as resp:
                    if resp.status >= 400:
                        raise req.EngineRequestError(f"SGLang server {url} rejected a streamed POST /generate "
                                                     f"with HTTP {resp.status}: {(await resp.text())[:300]}")
                    async for data in resp.content.iter_any():
                        buffer += data
                        *events, buffer = buffer.split(b"\n\n")
                        for event in events:
                            text = event.strip()[len(b"data:"):].strip()
                            if not text or text == b"[DONE]":
                                continue
                            item = json.loads(text)
                            if "error" in item:
                                raise req.EngineRequestError(f"SGLang server {url}: {item['error']}")
                            if item["meta_info"].get("finish_reason") is None:
                                continue
                            k = lo + int(item.get("index", 0))
                            i = jobs[k][0]
                            self.stats.add(item["meta_info"])
                            done.put_nowait((k, req.parse_generate(item, prompt_ids[i], i, 1, url)[0]))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise EngineUnavailable(f"SGLang server {url} failed a streamed POST /generate: "
                                        f"{type(exc).__name__}: {exc}") from exc

        async with self._session() as session:
            streams = {asyncio.create_task(one(j, lo, batch, session))
                       for j, (lo, batch) in enumerate(self._server_batches(payloads))}
            try:
                for _ in payloads:
                    getter = asyncio.ensure_future(done.get())
                    while not getter.done():
                        finished, _ = await asyncio.wait({getter, *streams}, return_when=asyncio.FIRST_COMPLETED)
                        for t in finished - {getter}:
                            streams.discard(t)
                            if t.exception() is not None:
                                getter.cancel()
                                raise t.exception()
                        if not getter.done() and not streams and done.empty():
                            getter.cancel()
                            raise EngineUnavailable("a streamed /generate ended before all its samples finished")
                    yield getter.result()
            finally:
                for t in streams:
                    t.cancel()
                await asyncio.gather(*streams, return_exceptions=True)

    # -- teacher scoring ------------------------------------------------------------------
    def _top_logprobs_num(self, temperature: float, top_k: int) -> int:
        if temperature <= 0:
            raise ConfigError(f"objective.teacher_temperature must be > 0, got {temperature}")
        if temperature == 1.0:  # padded rows may rank among the top: ask for that many more
            return top_k + len(self.padded_ids) if top_k > 0 else 0
        if not self.full_vocab_size:
            raise ConfigError(
                f"objective.teacher_temperature={temperature}: SGLang returns prompt logprobs at "
                "temperature 1 only, so the client must rescale the full distribution; pass "
                "full_vocab_size to EngineClient (or use teacher_temperature=1.0)")
        return self.full_vocab_size + len(self.padded_ids)

    def _scoring_waves(self, rollouts: List[Rollout]) -> tuple:
        """Indices scored first (one leader per long-prompt group + short-prompt groups) and
        second (the other samples of long-prompt groups, which then hit the cached prompt)."""
        seen: set = set()
        first, second = [], []
        for i, r in enumerate(rollouts):
            key = tuple(r.prompt_ids)
            if key in seen and len(key) >= self.min_shared_prompt_tokens:
                second.append(i)
            else:
                first.append(i)
            seen.add(key)
        return first, second

    async def ascore(self, rollouts: List[Rollout], *, temperature: float = 1.0,
                     top_k: int = 0) -> List[Rollout]:
        """Fill teacher logprobs (and top-k) in place; returns the same list."""
        num_top = self._top_logprobs_num(temperature, top_k)
        todo = [r for r in rollouts if r.response_ids]
        for r in rollouts:
            if not r.response_ids:
                r.teacher_logprobs, r.teacher_topk_ids, r.teacher_topk_logprobs = [], None, None
        first_wave, second_wave = self._scoring_waves(todo)
        for wave in (first_wave, second_wave):  # leaders put their prompt into the radix cache
            payloads = [req.score_payload(todo[i], top_logprobs_num=num_top) for i in wave]
            answers = await self._post_many("/generate", payloads)
            for i, answer in zip(wave, answers):
                self.stats.add(answer["meta_info"])
                req.parse_score(answer, todo[i], temperature=temperature, top_k=top_k,
                                full_vocab_size=self.full_vocab_size,
                                url=self.urls[0] if len(self.urls) == 1 else ",".join(self.urls))
        return rollouts

    # -- sync wrappers --------------------------------------------------------------------
    def generate(self, prompt_ids: List[List[int]], **kwargs: Any) -> List[Rollout]:
        """Blocking ``agenerate`` (for scripts and the synchronous loop)."""
        return _run(self.agenerate(prompt_ids, **kwargs))

    def score(self, rollouts: List[Rollout], **kwargs: Any) -> List[Rollout]:
        """Blocking ``ascore``."""
        return _run(self.ascore(rollouts, **kwargs))

    def post_each(self, path: str, payload: Dict[str, Any]) -> List[Any]:
        return _run(self.apost_each(path, payload))

    def post_to(self, url: str, path: str, payload: Dict[str, Any], *,
                max_retries: Optional[int] = None) -> Any:
        return _run(self.apost_to(url, path, payload, max_retries=max_retries))

    def get(self, path: str, *, url: Optional[str] = None) -> Any:
        return _run(self.aget(path, url=url))


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("EngineClient sync methods cannot run inside an event loop; "
                       "await the a* methods (agenerate, ascore) instead")
