"""Weight sync by broadcast over a process group (``/update_weights_from_distributed``).

The GPU transport: the learner (rank 0) and every TP rank of every student server join one
extra process group (NCCL on GPU) created through SGLang's ``/init_weights_update_group``; each
push announces names/dtypes/shapes over HTTP and broadcasts the tensors from rank 0, GPU to
GPU, no host copies. Server ``i`` takes ranks ``1 + sum(tp of servers < i)`` onward.

NCCL cannot run on the CPU machines of this project, so the NCCL path is not exercised by the
tests here. The same code with ``backend="gloo"`` is what a CPU test can drive.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any, Callable, List, Mapping, Optional

import torch

from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.http import EngineUnavailable
from opd_megatron.engines.weight_sync.base import (Timer, begin_weight_update, buckets, check_success,
                                                   post_all_checked)


def new_sender_group(master_address: str, master_port: int, world_size: int, group_name: str,
                     backend: str, timeout_s: float) -> Any:
    """Rank 0 of a process group outside the default one (the learner keeps its own world).

    Mirrors how SGLang builds the receiving side (TCP rendezvous at
    ``tcp://master_address:master_port``, store keys prefixed by ``group_name``), so both ends
    meet. Uses torch's c10d internals, as SGLang does: the public ``new_group`` needs the
    learner's default group to contain the servers.
    """
    from torch.distributed import TCPStore
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world

    timeout = timedelta(seconds=timeout_s)
    # Rank 0 hosts the store itself: torch's tcp:// rendezvous would, under torchrun
    # (TORCHELASTIC_USE_AGENT_STORE), only connect to the agent's store, and no one would listen.
    store = TCPStore(master_address, master_port, world_size, is_master=True, timeout=timeout,
                     wait_for_workers=False)
    store = PrefixStore(group_name, store)
    group, _ = _new_process_group_helper(world_size, 0, [], Backend(backend), store,
                                         group_name=group_name, backend_options=None,
                                         timeout=timeout)
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` in a thread (HTTP calls that block until the broadcast is done)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout_s: Optional[float] = None) -> Any:
        thread.join(timeout_s)
        if thread.is_alive():
            raise EngineUnavailable("weight-sync HTTP call did not finish in time")
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


class DistributedSync:
    """``WeightSync`` by broadcast from the learner (rank 0) to all student server ranks."""

    def __init__(self, client: EngineClient, *, master_address: str, master_port: int,
                 tp_sizes: List[int], backend: str = "nccl",
                 group_name: str = "opd_weight_sync", device: str = "cuda",
                 bucket_bytes: int = 1 << 30, timeout_s: float = 600.0) -> None:
        self.client = client
        self.group_name = group_name
        self.device = torch.device(device)
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        world_size = 1 + sum(tp_sizes)
        offsets = [1 + sum(tp_sizes[:i]) for i in range(len(tp_sizes))]
        # Every server blocks in the rendezvous until rank 0 joins: send from threads.
        joins = [
            _in_thread(lambda url=url, off=off: self.client.post_to(
                url, "/init_weights_update_group",
                {"master_address": master_address, "master_port": master_port,
                 "rank_offset": off, "world_size": world_size,
                 "group_name": group_name, "backend": backend},
                max_retries=0))
            for url, off in zip(self.client.urls, offsets)
        ]
        self.group = new_sender_group(master_address, master_port, world_size, group_name,
                                      backend, timeout_s)
        for url, join in zip(self.client.urls, joins):
            check_success([join(timeout_s)], "init_weights_update_group", [url])

    def push(self, hf_state_dict: Mapping[str, torch.Tensor], version: int) -> float:
        urls = self.client.urls
        with Timer() as timer:
            begin_weight_update(self.client)
            parts = list(buckets(hf_state_dict, self.bucket_bytes))
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                tensors = [t.detach().to(self.device).contiguous() for _, t in part]
                payload = {
                    "names": [name for name, _ in part],
                    "dtypes": [str(t.dtype).removeprefix("torch.") for t in tensors],
                    "shapes": [list(t.shape) for t in tensors],
                    "group_name": self.group_name,
                    "flush_cache": last,
                    "weight_version": str(version) if last else None,
                }
                join = _in_thread(lambda payload=payload: self.client.post_each(
                    "/update_weights_from_distributed", payload))
                for tensor in tensors:  # same order as names: the servers receive in that order
                    torch.distributed.broadcast(tensor, src=0, group=self.group)
                check_success(join(self.timeout_s), "update_weights_from_distributed", urls)
            post_all_checked(self.client, "/end_weight_update", {})
        return timer.elapsed_s

    def close(self) -> None:
        try:
            self.client.post_each("/destroy_weights_update_group", {"group_name": self.group_name})
        finally:
            torch.distributed.destroy_process_group(self.group)
