"""Weight sync: one protocol (``WeightSync.push(hf_state_dict, version)``), one file per transport.

- ``TensorSync`` (tensor.py): shared memory, same host.
- ``DiskSync`` (disk.py): an HF directory on a shared filesystem.
- ``DistributedSync`` (distributed.py): broadcast over a process group (NCCL; gloo on CPU).

``make_weight_sync`` picks one from ``engines.weight_sync``; the loop only calls ``push``.
"""

from __future__ import annotations

import os
from typing import List, Optional

from opd_megatron.config.schema import EnginesConfig
from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.weight_sync.base import WeightSync, served_weight_version
from opd_megatron.engines.weight_sync.disk import DiskSync
from opd_megatron.engines.weight_sync.distributed import DistributedSync
from opd_megatron.engines.weight_sync.tensor import TensorSync
from opd_megatron.errors import ConfigError

__all__ = ["WeightSync", "TensorSync", "DiskSync", "DistributedSync", "make_weight_sync",
           "served_weight_version"]


def make_weight_sync(engines: EnginesConfig, server_urls: List[str], *, base_model_dir: str,
                     staging_dir: str | os.PathLike, master_address: Optional[str] = None,
                     master_port: Optional[int] = None, on_gpu: bool = True) -> WeightSync:
    """The transport named by ``engines.weight_sync``, talking to each student server directly.

    ``server_urls`` must be the servers themselves, not the router (it drops weight updates).
    ``distributed`` broadcasts over NCCL on GPUs, over gloo from host memory on CPU
    (``on_gpu=False``: the same protocol, how a rehearsal here runs a cluster recipe's transport).
    """
    client = EngineClient.from_config(server_urls, engines)
    kind = engines.weight_sync
    if kind == "tensor":
        return TensorSync(client, tp_size=engines.student.tp)
    if kind == "disk":
        return DiskSync(client, base_model_dir=base_model_dir, staging_dir=staging_dir)
    if kind == "distributed":
        if master_address is None or master_port is None:
            raise ConfigError("engines.weight_sync=distributed needs the learner's master "
                              "address and a free port for the update group")
        return DistributedSync(client, master_address=master_address, master_port=master_port,
                               tp_sizes=[engines.student.tp] * len(server_urls),
                               backend="nccl" if on_gpu else "gloo", device="cuda" if on_gpu else "cpu")
    raise ConfigError(f"engines.weight_sync: unknown transport '{kind}' "
                      "(choose tensor | disk | distributed)")
