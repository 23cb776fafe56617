"""Weight sync through shared memory on the same host (``/update_weights_from_tensor``).

The tensors are pickled with torch's multiprocessing reductions, so only handles travel over
HTTP and the server maps the same memory (CUDA IPC on GPU, shared-memory files on CPU). On CPU
the sender must use the ``file_system`` sharing strategy: with the default ``file_descriptor``
strategy the server crashed (cpu-stack notes). Updates sit between ``/begin_weight_update``
and ``/end_weight_update`` (SGLang answers 400 otherwise). Same host only.
"""

from __future__ import annotations

import base64
import io
from multiprocessing.reduction import ForkingPickler
from typing import List, Mapping, Tuple

import torch
import torch.multiprocessing

from opd_megatron import faults
from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.weight_sync.base import (Timer, begin_weight_update, buckets,
                                                  post_all_checked)


def serialize_named_tensors(named: List[Tuple[str, torch.Tensor]]) -> str:
    """base64 of the ForkingPickler bytes SGLang's MultiprocessingSerializer expects."""
    buf = io.BytesIO()
    ForkingPickler(buf).dump(named)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class TensorSync:
    """``WeightSync`` over ``/update_weights_from_tensor`` (same host)."""

    def __init__(self, client: EngineClient, *, tp_size: int = 1,
                 bucket_bytes: int = 512 << 20) -> None:
        self.client = client
        self.tp_size = tp_size
        """Each TP rank of a server gets its own copy of the handles."""
        self.bucket_bytes = bucket_bytes
        """Tensors per request are capped at about this many bytes (bounds pinned memory)."""
        torch.multiprocessing.set_sharing_strategy("file_system")

    def push(self, hf_state_dict: Mapping[str, torch.Tensor], version: int) -> float:
        with Timer() as timer:
            begin_weight_update(self.client)
            parts = list(buckets(hf_state_dict, self.bucket_bytes))
            for i, part in enumerate(parts):
                named = [(name, t.detach().contiguous()) for name, t in part]
                last = i == len(parts) - 1
                payload = {
                    "serialized_named_tensors": [serialize_named_tensors(named)] * self.tp_size,
                    "flush_cache": last,
                    "weight_version": str(version) if last else None,
                }
                post_all_checked(self.client, "/update_weights_from_tensor", payload)
                faults.in_push(version)
            post_all_checked(self.client, "/end_weight_update", {})
        return timer.elapsed_s

    def close(self) -> None:
        pass
