"""The one weight-sync protocol: the training loop calls ``push`` and never asks how.

Every transport (tensor, disk, distributed) pushes the learner's full HF-named state dict to
every server of the student role (directly: sglang-router does not forward weight updates),
tags it with the weight version (so each rollout records which weights produced it) and
flushes the servers' prefix cache (cached KV of the old weights would otherwise be reused).
"""

from __future__ import annotations

import time
from typing import Dict, Iterator, List, Mapping, Protocol, Tuple, runtime_checkable

import torch

from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.http import EngineRequestError


@runtime_checkable
class WeightSync(Protocol):
    """Push new student weights to the rollout servers."""

    def push(self, hf_state_dict: Mapping[str, torch.Tensor], version: int) -> float:
        """Load ``hf_state_dict`` (HF parameter names -> full tensors) as weight ``version``.

        Returns the seconds it took. Raises ``RuntimeFailure`` if a server refused.
        """
        ...

    def close(self) -> None:
        """Release what the transport holds (process groups, staging files)."""
        ...


def check_success(answers: List[dict], what: str, urls: List[str]) -> None:
    for url, answer in zip(urls, answers):
        if isinstance(answer, dict) and answer.get("success") is False:
            raise EngineRequestError(f"SGLang server {url} failed {what}: "
                                     f"{answer.get('message', answer)}")


def post_all_checked(client: EngineClient, path: str, payload: dict) -> None:
    """POST to every server; raise naming the server if one answers success=false."""
    check_success(client.post_each(path, payload), path.lstrip("/"), client.urls)


STALE_SESSION = "weight-update session is already open"
def begin_weight_update(client: EngineClient) -> None:
    """Open a weight-update session on every server.

    A writer SIGKILLed between ``/begin_weight_update`` and ``/end_weight_update`` leaves the
    server's session open and every later begin is refused with HTTP 400. Such a session can
    only hold part of an earlier push, and the push that follows overwrites every weight, so it
    is closed (said in one line) and reopened.
    """
    for url in client.urls:
        try:
            answer = client.post_to(url, "/begin_weight_update", {})
        except EngineRequestError as exc:
            if STALE_SESSION not in str(exc):
                raise
            print(f"[opd] {url} had a weight-update session left open (its writer died mid-push); "
                  "closed it, pushing all weights again", flush=True)
            check_success([client.post_to(url, "/end_weight_update", {})], "end_weight_update", [url])
            answer = client.post_to(url, "/begin_weight_update", {})
        check_success([answer], "begin_weight_update", [url])


def buckets(state: Mapping[str, torch.Tensor],
            bucket_bytes: int) -> Iterator[List[Tuple[str, torch.Tensor]]]:
    """Split the state dict into lists of at most ~``bucket_bytes`` (one tensor at least)."""
    bucket: List[Tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed_s = time.perf_counter() - self.start


def served_weight_version(client: EngineClient) -> Dict[str, str]:
    """``weight_version`` each server reports now (for checks and logs)."""
    return {url: str(client.get("/model_info", url=url).get("weight_version"))
            for url in client.urls}
