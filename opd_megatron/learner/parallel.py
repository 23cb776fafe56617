"""Process groups for the learner: torch.distributed (gloo on CPU, NCCL on GPU) plus
Megatron's TP/PP/DP parallel state.

One process works without torchrun (a private file store, world size 1); under torchrun the
usual RANK/WORLD_SIZE/MASTER_ADDR env vars are used. tp * pp * dp must equal the world size.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist

from opd_megatron.config.schema import ParallelConfig
from opd_megatron.errors import ConfigError
from opd_megatron.learner import cpu_compat


@dataclass(frozen=True)
class Ranks:
    """This process's coordinates in the learner's process grid."""

    tp_rank: int
    tp: int
    pp_rank: int
    pp: int
    dp_rank: int
    dp: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def _init_process_group() -> None:
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return
    store_file = tempfile.NamedTemporaryFile(prefix="opd-learner-store-", delete=False).name
    dist.init_process_group(backend, init_method=f"file://{store_file}", rank=0, world_size=1)


def init_parallel(parallel: ParallelConfig, seed: int) -> Ranks:
    """Initialise (once) and return this rank's coordinates; seeds Megatron's RNG tracker."""
    from megatron.core import parallel_state, tensor_parallel

    cpu_compat.apply()
    _init_process_group()
    world = dist.get_world_size()
    if parallel.tp * parallel.pp * parallel.dp != world:
        raise ConfigError(
            f"parallel.tp*pp*dp = {parallel.tp}*{parallel.pp}*{parallel.dp} != world size {world};"
            " launch with torchrun --nproc_per_node=tp*pp*dp")
    fresh = not parallel_state.model_parallel_is_initialized()
    if not fresh:
        if (parallel_state.get_tensor_model_parallel_world_size() != parallel.tp
                or parallel_state.get_pipeline_model_parallel_world_size() != parallel.pp):
            raise ConfigError("learner parallel layout differs from the one already initialised"
                              " in this process (one tp/pp layout per process)")
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp)
        # After initialize_model_parallel, else forwards fail ("model-parallel-rng is not
        # added"). Only once per process: a second model (the teacher) must not reseed.
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return current_ranks()


def current_ranks() -> Ranks:
    from megatron.core import parallel_state as ps

    return Ranks(
        tp_rank=ps.get_tensor_model_parallel_rank(), tp=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(), pp=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(), dp=ps.get_data_parallel_world_size(),
    )


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
