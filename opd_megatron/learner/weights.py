"""Moving HF weights into a live (possibly TP/PP-sharded) GPTModel and back out.

``load_hf_into`` checks that the mapping produced exactly the model's own keys, so a mapping
bug or an architecture mismatch fails loudly instead of leaving weights uninitialised.
``gather_hf`` all-gathers TP shards and collects the pipeline stages on global rank 0.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from opd_megatron.errors import ConfigError
from opd_megatron.learner.mapping import hf_to_mcore_shard, mcore_stage_to_hf
from opd_megatron.learner.parallel import Ranks, device
from opd_megatron.learner.qwen3 import Qwen3Arch

StateDict = Dict[str, torch.Tensor]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel under Megatron's DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def local_state(model: torch.nn.Module) -> StateDict:
    """The model's weights under Megatron names, without TE ``_extra_state`` entries."""
    return {k: v for k, v in unwrap(model).state_dict().items()
            if not k.endswith("_extra_state") and isinstance(v, torch.Tensor)}


def load_hf_into(model: torch.nn.Module, hf: StateDict, arch: Qwen3Arch, ranks: Ranks) -> None:
    gpt = unwrap(model)
    shard = hf_to_mcore_shard(hf, arch, tp=ranks.tp, tp_rank=ranks.tp_rank, pp=ranks.pp,
                              pp_rank=ranks.pp_rank, te=getattr(gpt, "use_te", False))
    own = local_state(gpt)
    missing, extra = sorted(set(own) - set(shard)), sorted(set(shard) - set(own))
    if missing or extra:
        raise ConfigError(f"HF -> Megatron mapping does not fit the model: missing {missing[:4]},"
                          f" unexpected {extra[:4]}")
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.shape != shard[name].shape:
                raise ConfigError(f"weight {name}: checkpoint shape {tuple(shard[name].shape)} "
                                  f"!= model shape {tuple(tensor.shape)}")
            tensor.copy_(shard[name])


def _all_gather_tp(state: StateDict) -> List[StateDict]:
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return [state]
    shards: List[StateDict] = [{} for _ in range(tp)]
    for name in sorted(state):
        tensor = state[name].detach().contiguous()
        parts = [torch.empty_like(tensor) for _ in range(tp)]
        dist.all_gather(parts, tensor, group=group)
        for r in range(tp):
            shards[r][name] = parts[r]
    return shards


def _send_stage_to_rank0(stage: StateDict, src: int) -> StateDict:
    """Point-to-point copy of one stage's HF tensors from global rank ``src`` to rank 0."""
    rank = dist.get_rank()
    meta = [[(k, tuple(v.shape), v.dtype) for k, v in sorted(stage.items())]] if rank == src else [None]
    if rank == src:
        dist.send_object_list(meta, dst=0)
        for name, shape, _ in meta[0]:
            dist.send(stage[name].to(device()).contiguous(), dst=0)
        return {}
    dist.recv_object_list(meta, src=src)
    out: StateDict = {}
    for name, shape, dtype in meta[0]:
        buf = torch.empty(shape, dtype=dtype, device=device())
        dist.recv(buf, src=src)
        out[name] = buf.cpu()
    return out


def gather_hf(model: torch.nn.Module, arch: Qwen3Arch, ranks: Ranks,
              state: Optional[StateDict] = None) -> StateDict:
    """Full HF-named weights on global rank 0 ({} elsewhere). Collective over all ranks.
    ``state``: this rank's Megatron-named weights to gather instead of the model's own
    (e.g. LoRA-merged ones)."""
    from megatron.core import parallel_state as ps

    gpt = unwrap(model)
    tp_shards = _all_gather_tp(local_state(gpt) if state is None else state)
    stage: StateDict = {}
    if ranks.tp_rank == 0 and ranks.dp_rank == 0:
        # Copies: some entries (norms) would otherwise alias the live, still-training params.
        stage = {k: v.detach().to("cpu", copy=True) for k, v in mcore_stage_to_hf(
            tp_shards, arch, pp=ranks.pp, pp_rank=ranks.pp_rank,
            te=getattr(gpt, "use_te", False)).items()}
    if ranks.pp == 1:
        return stage if dist.get_rank() == 0 else {}
    out: StateDict = dict(stage) if dist.get_rank() == 0 else {}
    pp_ranks = ps.get_pipeline_model_parallel_group()
    stage_ranks = dist.get_process_group_ranks(pp_ranks) if dist.get_rank() == 0 else None
    holder = [stage_ranks]
    dist.broadcast_object_list(holder, src=0)  # every rank learns rank 0's pipeline
    for src in holder[0][1:]:
        if dist.get_rank() in (0, src):
            received = _send_stage_to_rank0(stage, src)
            out.update(received)
    return out
