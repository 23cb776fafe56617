"""LoRA adapters on a Megatron-Core GPTModel, and their merge into plain weights.

``apply_lora`` freezes every weight of the model and attaches a trainable low-rank adapter to
each targeted linear (``linear_qkv``, ``linear_proj``, ``linear_fc1``, ``linear_fc2``): the
layer's output becomes ``base(x) + scale * B(A(x))`` with ``A: [r, in]`` (Kaiming-uniform,
seeded), ``B: [out, r]`` (zero, so a fresh adapter leaves the model unchanged) and
``scale = alpha / r``. The adapter is a child module ``<linear>.lora`` (state-dict names
``...linear_qkv.lora.A`` / ``.B``) called from a forward hook, so the linear keeps its type,
its attributes and its weight's name: the HF mapping and Megatron's own code see the model
they know. Only the adapters require grad, so Megatron DDP and the distributed optimizer hold
(and step) nothing else.

``merged_state`` is the model's state dict with every adapted weight replaced by
``W + scale * B @ A`` and the adapter entries dropped: what is exported and synced to the
serving engines, which need no LoRA support.

Tensor parallelism, following the base layer's sharding:
- column-parallel (``linear_qkv``, ``linear_fc1``; output sharded): ``A`` replicated, ``B``
  sharded on its output rows like ``W``. ``A(x)`` passes Megatron's copy-to-TP region, whose
  backward all-reduces the gradient, so every rank gets the full gradient of ``A`` and ``x``.
- row-parallel (``linear_proj``, ``linear_fc2``; input sharded): ``A`` sharded on its input
  columns like ``W``, ``A(x)`` summed over TP (the base output's all-reduce), ``B`` replicated.
The initial ``A`` is drawn at full size from a per-layer seed and then sliced, so every TP
layout starts from the same adapter as TP=1 (tested: TP=2 trains like TP=1). PP > 1 (seeds use
the global layer number) and the GPU Transformer Engine spec are written but untested.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Tuple

import torch

from opd_megatron.config.schema import LORA_TARGETS, LoraConfig

StateDict = Dict[str, torch.Tensor]

COLUMN_PARALLEL = ("linear_qkv", "linear_fc1")
"""Targets whose output dimension is sharded over TP (the rest are row-parallel)."""


class LoraAdapter(torch.nn.Module):
    """The low-rank update of one (TP-sharded) linear: ``scale * B @ A`` (see module doc)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, *, scale: float, column: bool,
                 tp: int):
        super().__init__()
        self.A = torch.nn.Parameter(A)
        """[r, in_local] (row-parallel: this rank's input columns; column: all of them)."""
        self.B = torch.nn.Parameter(B)
        """[out_local, r] (column-parallel: this rank's output rows; row: all of them)."""
        self.scale, self.column, self.tp = scale, column, tp
        _mark_tp(self.B if column else self.A, partition_dim=0 if column else 1, tp=tp)
        _mark_tp(self.A if column else self.B, partition_dim=None, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import (
            copy_to_tensor_model_parallel_region,
            reduce_from_tensor_model_parallel_region,
        )

        h = torch.nn.functional.linear(x, self.A)
        if self.tp > 1:
            h = (copy_to_tensor_model_parallel_region(h) if self.column
                 else reduce_from_tensor_model_parallel_region(h))
        return torch.nn.functional.linear(h, self.B) * self.scale

    def delta(self) -> torch.Tensor:
        """``scale * B @ A``: this rank's shard of the weight update, shaped like ``W``."""
        return (self.B @ self.A) * self.scale


def _mark_tp(param: torch.nn.Parameter, *, partition_dim, tp: int) -> None:
    """Megatron's TP attributes: the grad norm counts a sharded param on every TP rank and a
    replicated one on TP rank 0 only."""
    param.tensor_model_parallel = partition_dim is not None and tp > 1
    param.partition_dim = -1 if partition_dim is None else partition_dim
    param.partition_stride = 1


def _lora_input(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the adapter multiplies: the linear's input, normalised first when the norm is
    fused into the linear (Transformer Engine's LayerNormColumnParallelLinear).

    UNTESTED GPU PATH: the CPU build uses Megatron's local spec, whose linears take the
    already-normalised input; the TE branch below follows TE's RMSNorm (no zero-centred
    gamma) and has not been run."""
    norm_weight = getattr(module, "layer_norm_weight", None)
    if norm_weight is None:
        return x
    eps = getattr(module, "eps", 1e-6)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * norm_weight.float()).to(x.dtype)


def _hook(module: torch.nn.Module, args: Tuple, output):
    """Forward hook: add the adapter's output to the linear's ``(output, bias)`` pair."""
    out, bias = output if isinstance(output, tuple) else (output, None)
    out = out + module.lora(_lora_input(module, args[0])).to(out.dtype)
    return (out, bias) if isinstance(output, tuple) else out


def targets_of(gpt: torch.nn.Module, targets: List[str]) -> Iterator[Tuple[str, int, str, torch.nn.Module]]:
    """(module name, global 1-based layer number, target name, linear) of every targeted
    linear of this pipeline stage, in model order."""
    for layer in gpt.decoder.layers:
        for name, module in layer.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in targets:
                yield name, int(layer.layer_number), leaf, module


def _initial_A(shape_full: Tuple[int, int], seed: int) -> torch.Tensor:
    """Kaiming-uniform (a = sqrt(5), as torch.nn.Linear) [r, in_full] from its own seed."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(shape_full[1])  # kaiming_uniform with a=sqrt(5) on fan_in
    return (torch.rand(shape_full, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound).float()


def apply_lora(gpt: torch.nn.Module, lora: LoraConfig, *, seed: int, tp: int, tp_rank: int) -> int:
    """Freeze ``gpt`` and attach adapters to ``lora.targets``. Returns the number of adapter
    parameters on this rank. Call after the HF weights are loaded, before DDP wraps it."""
    unknown = sorted(set(lora.targets) - set(LORA_TARGETS))
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; allowed: {list(LORA_TARGETS)}")
    for param in gpt.parameters():
        param.requires_grad_(False)
    scale = lora.alpha / lora.rank
    num_params = 0
    for _, layer_number, leaf, module in targets_of(gpt, lora.targets):
        weight = module.weight
        out_local, in_local = weight.shape
        column = leaf in COLUMN_PARALLEL
        in_full = in_local if column else in_local * tp
        layer_seed = (seed * 1_000_003 + layer_number * 16 + LORA_TARGETS.index(leaf)) % 2**63
        A = _initial_A((lora.rank, in_full), layer_seed)
        if not column:
            A = A.chunk(tp, dim=1)[tp_rank].clone()
        A = A.to(device=weight.device, dtype=weight.dtype)
        B = torch.zeros(out_local, lora.rank, device=weight.device,
                        dtype=weight.dtype)
        module.lora = LoraAdapter(A, B, scale=scale, column=column, tp=tp)
        module.register_forward_hook(_hook)
        num_params += A.numel() + B.numel()
    return num_params


def adapters(gpt: torch.nn.Module) -> Dict[str, LoraAdapter]:
    """Every adapter of the model by the name of the linear it adapts."""
    return {name[: -len(".lora")]: m for name, m in gpt.named_modules()
            if isinstance(m, LoraAdapter)}


def merged_state(gpt: torch.nn.Module, state: StateDict) -> StateDict:
    """``state`` (the model's own, e.g. ``weights.local_state``) with each adapted weight
    replaced by ``W + scale * B @ A`` and the adapter entries removed. New tensors; the model
    is left as it is."""
    out = {k: v for k, v in state.items() if ".lora." not in k}
    with torch.no_grad():
        for name, adapter in adapters(gpt).items():
            key = f"{name}.weight"
            out[key] = state[key] + adapter.delta().to(state[key].dtype)
    return out
