"""Learner checkpoints: one file per rank plus ``meta.json``, written atomically.

Each ``rank_XXXXX.pt`` holds that rank's model shard (Megatron names), the state of its
torch optimizer(s) (Adam moments and step of its distributed-optimizer shard), its fp32 main
parameters (the master copy under bf16), its RNG states (CPU, CUDA, Megatron's tracker), the
step and the caller's ``extra`` dict. Only tensors, numbers, strings, lists and dicts are
stored, so ``torch.load(weights_only=True)`` reads every file.

Atomic: all ranks write into one temp directory next to the target, fsync their files,
then rank 0 writes ``meta.json`` last and renames the directory into place. A crash leaves
either the old checkpoint or the new one, never a mix. A checkpoint resumes only the layout
it was written with (tp/pp/dp, dtype); to change layout, export HF and start from that.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist

from opd_megatron import faults
from opd_megatron.errors import ConfigError
from opd_megatron.learner.hf_io import commit_dir, temp_sibling
from opd_megatron.learner.weights import local_state

FORMAT = "opd-megatron-learner-checkpoint-v1"
META = "meta.json"


def _rank_file(root: Path, rank: int) -> Path:
    return root / f"rank_{rank:05d}.pt"


def _inner_optimizers(optimizer) -> List[Any]:
    """The torch optimizers under Megatron's Chained / Distributed / FP32 wrappers."""
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    return [s.optimizer for s in subs if getattr(s, "optimizer", None) is not None]


def _rng_state() -> Dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state: Dict[str, Any] = {"cpu": torch.get_rng_state(),
                             "tracker": {k: v.clone() for k, v in
                                         get_cuda_rng_tracker().get_states().items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states({k: v.clone() for k, v in state["tracker"].items()})


def _rank_payload(model, optimizer, step: int, extra: dict) -> Dict[str, Any]:
    inner = _inner_optimizers(optimizer)
    return {
        "format": FORMAT,
        "step": int(step),
        "model": {k: v.detach().cpu().clone() for k, v in local_state(model).items()},
        "optimizer_state": [opt.state_dict()["state"] for opt in inner],
        "main_params": [[p.detach().cpu().clone() for g in opt.param_groups for p in g["params"]]
                        for opt in inner],
        "rng": _rng_state(),
        "extra": extra,
    }


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str = "extra") -> None:
    """``extra`` must load under ``torch.load(weights_only=True)``: plain data only."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ConfigError(f"checkpoint {where}: key {key!r} must be str or int")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise ConfigError(f"checkpoint {where} is a {type(value).__name__}; store plain data "
                          "(dict/list/str/int/float/bool/None/Tensor)")


def _shared_temp_dir(final: Path) -> Path:
    holder = [str(temp_sibling(final)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def save(ckpt_dir, *, model, optimizer, step: int, extra: dict, layout: dict) -> Path:
    """Collective: every rank writes its file; rank 0 commits. Returns the final directory."""
    _check_plain(extra)
    final = Path(ckpt_dir)
    tmp = _shared_temp_dir(final)
    try:
        path = _rank_file(tmp, dist.get_rank())
        with open(path, "wb") as f:  # closed on failure too: a full disk gets its space back
            torch.save(_rank_payload(model, optimizer, step, extra), f)
            f.flush()
            os.fsync(f.fileno())  # each rank its own file: on a shared filesystem rank 0's fsync is not enough
        faults.in_checkpoint(step)
        dist.barrier()
        if dist.get_rank() == 0:
            meta = {"format": FORMAT, "step": int(step), "world_size": dist.get_world_size(),
                    **layout}
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            commit_dir(tmp, final)  # fsyncs every rank's file, then renames
    except BaseException:
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    return final


def read_meta(ckpt_dir) -> dict:
    path = Path(ckpt_dir) / META
    if not path.is_file():
        raise ConfigError(f"{path}: not found; not a complete learner checkpoint")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _check_layout(meta: dict, layout: dict, path: Path) -> None:
    diffs = {k: (meta.get(k), v) for k, v in layout.items() if meta.get(k) != v}
    if meta.get("world_size") != dist.get_world_size():
        diffs["world_size"] = (meta.get("world_size"), dist.get_world_size())
    if diffs:
        raise ConfigError(f"{path}: written with a different layout {diffs} (saved, now); "
                          "resume with the same parallel settings or start from an HF export")


def _restore_optimizer(optimizer, payload: Dict[str, Any]) -> None:
    inner = _inner_optimizers(optimizer)
    if len(inner) != len(payload["optimizer_state"]):
        raise ConfigError("checkpoint optimizer does not match this learner's optimizer")
    for opt, state, mains in zip(inner, payload["optimizer_state"], payload["main_params"]):
        params = [p for g in opt.param_groups for p in g["params"]]
        if len(params) != len(mains):
            raise ConfigError("checkpoint optimizer shards do not match this learner's")
        with torch.no_grad():
            for p, saved in zip(params, mains):
                p.copy_(saved)
        current = opt.state_dict()
        opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def load(ckpt_dir, *, model, optimizer, layout: dict) -> Tuple[int, dict]:
    """Collective: restore this rank's shard. Returns (step, extra)."""
    root = Path(ckpt_dir)
    _check_layout(read_meta(root), layout, root)
    path = _rank_file(root, dist.get_rank())
    if not path.is_file():
        raise ConfigError(f"{path}: missing rank file; the checkpoint is incomplete")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    own = local_state(model)
    if set(own) != set(payload["model"]):
        raise ConfigError(f"{path}: model weights do not match this learner's model")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(payload["model"][name])
    _restore_optimizer(optimizer, payload)
    _set_rng_state(payload["rng"])
    dist.barrier()
    return int(payload["step"]), payload["extra"]
