"""One HTTP call to one SGLang server, with a timeout, retries with backoff and failover.

Every engine request of the project goes through :func:`post_json`, so "what happens when a
server dies mid-request" has one answer: connection errors, timeouts and 5xx answers are
retried (``max_retries`` times, exponential backoff, trying the next server URL each time when
there are several); a 4xx answer is a bad request and is raised at once; when the retries run
out, :class:`EngineUnavailable` names the server(s) and the last error. Nothing waits forever:
every attempt is bounded by ``request_timeout_s``. :func:`health_ok` is the one ``GET /health``
probe (blocking, no retries) of launched servers and of servers given by ``engines.<role>.urls``.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import aiohttp

from opd_megatron.errors import RuntimeFailure


class EngineUnavailable(RuntimeFailure):
    """A server could not be reached or kept failing past the configured retries."""


class EngineRequestError(RuntimeFailure):
    """A server answered that the request itself is wrong (4xx) or reported success=false."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long one attempt may take and how failures are retried."""

    request_timeout_s: float = 120.0
    """Seconds one attempt may take (connect + server work + reading the answer)."""
    max_retries: int = 3
    """Extra attempts after the first; 0: fail on the first error."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubled each further retry."""
    max_backoff_s: float = 8.0
    """Longest wait between two attempts."""

    def delay_s(self, attempt: int) -> float:
        return min(self.backoff_s * (2 ** attempt), self.max_backoff_s)


_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _attempt(session: aiohttp.ClientSession, url: str, path: str, payload: Any,
                   timeout_s: float, headers: dict) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url + path, json=payload, timeout=timeout, headers=headers) as resp:
        text = await resp.text()
        try:
            body = await resp.json(content_type=None) if text else {}
        except ValueError:
            body = {"raw": text[:500]}
        return resp.status, body


async def post_json(session: aiohttp.ClientSession, urls: Sequence[str], path: str, payload: Any,
                    policy: RetryPolicy, *, first_url_index: int = 0,
                    api_key: Optional[str] = None) -> Any:
    """POST ``payload`` to ``path`` on one of ``urls``; retry/failover per ``policy``.

    Attempt k goes to ``urls[(first_url_index + k) % len(urls)]``, so a dead server's requests
    move to the next one. Returns the decoded JSON body of the first 2xx answer.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    errors: list[str] = []
    for attempt in range(policy.max_retries + 1):
        url = urls[(first_url_index + attempt) % len(urls)]
        try:
            status, body = await _attempt(session, url, path, payload,
                                          policy.request_timeout_s, headers)
        except _RETRYABLE as exc:
            errors.append(f"{url}: {_describe(exc)}")
        else:
            if status < 400:
                return body
            if status < 500:
                raise EngineRequestError(
                    f"SGLang server {url} rejected POST {path} with HTTP {status}: "
                    f"{str(body)[:300]}"
                )
            errors.append(f"{url}: HTTP {status} {str(body)[:200]}")
        if attempt < policy.max_retries:
            await asyncio.sleep(policy.delay_s(attempt))
    tried = ", ".join(sorted(set(e.split(": ", 1)[0] for e in errors)))
    raise EngineUnavailable(
        f"SGLang server(s) {tried} failed POST {path} after {policy.max_retries + 1} attempt(s) "
        f"(timeout {policy.request_timeout_s:g} s each); last error: {errors[-1]}. "
        "Check that the server is running and see its log in the run directory."
    )


async def get_json(session: aiohttp.ClientSession, url: str, path: str, *, timeout_s: float,
                   api_key: Optional[str] = None) -> Any:
    """One GET without retries (health checks and info queries poll on their own)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(url + path, timeout=timeout, headers=headers) as resp:
            if resp.status >= 400:
                raise EngineRequestError(f"SGLang server {url} answered GET {path} with "
                                         f"HTTP {resp.status}")
            return await resp.json(content_type=None)
    except _RETRYABLE as exc:
        raise EngineUnavailable(f"SGLang server {url} did not answer GET {path}: "
                                f"{_describe(exc)}") from exc


def health_ok(url: str, timeout_s: float) -> bool:
    """True when ``GET {url}/health`` answers 200 within ``timeout_s``; any error is False."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
