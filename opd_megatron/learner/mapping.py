"""Pure tensor mapping between HF Qwen3 weights and Megatron-Core GPTModel shards.

No process groups here: a shard is addressed by (tp_rank, pp_rank), so the same functions
serve offline conversion (``opd convert``) and the live learner (load, weight sync, export).

Layout facts (verified exact against transformers, see notes/cpu-stack.md):
- ``linear_qkv`` is group-major: for each KV group its query heads, then its k, then its v;
  TP splits it by whole KV groups.
- ``linear_fc1`` is [gate; up]; under TP each rank holds [gate_r; up_r].
- ``linear_proj`` / ``linear_fc2`` are row-parallel (split on dim 1); embedding and output
  layer are vocab-parallel (split on dim 0) after padding the vocab with zero rows.
- Local spec: separate ``input_layernorm`` / ``pre_mlp_layernorm``. Transformer Engine spec:
  those live inside the linears as ``linear_qkv.layer_norm_weight`` /
  ``linear_fc1.layer_norm_weight``. QK-norm is ``q_layernorm`` / ``k_layernorm`` in both.
- Tied embeddings: with PP > 1 the last stage keeps its own copy as ``output_layer.weight``
  (Megatron keeps the two in sync); with PP = 1 there is no ``output_layer.weight``.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from opd_megatron.errors import ConfigError
from opd_megatron.learner.qwen3 import Qwen3Arch, padded_vocab_size

StateDict = Dict[str, torch.Tensor]


def _norm_names(te: bool) -> Dict[str, str]:
    if te:
        return {"input_layernorm": "self_attention.linear_qkv.layer_norm_weight",
                "post_attention_layernorm": "mlp.linear_fc1.layer_norm_weight"}
    return {"input_layernorm": "input_layernorm.weight",
            "post_attention_layernorm": "pre_mlp_layernorm.weight"}


def stage_layers(arch: Qwen3Arch, pp: int, pp_rank: int) -> range:
    """Global layer indices held by pipeline stage ``pp_rank`` (even split)."""
    per_stage = arch.num_layers // pp
    return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def _get(hf: StateDict, name: str) -> torch.Tensor:
    if name not in hf:
        raise ConfigError(f"HF checkpoint lacks weight {name!r}; is it a Qwen3ForCausalLM?")
    return hf[name]


def _vocab_shard(weight: torch.Tensor, arch: Qwen3Arch, tp: int, tp_rank: int) -> torch.Tensor:
    rows = padded_vocab_size(arch.vocab_size, tp)
    padded = weight.new_zeros((rows, weight.shape[1]))
    padded[: weight.shape[0]] = weight
    return padded.chunk(tp, dim=0)[tp_rank].clone()


def _qkv_shard(q, k, v, arch: Qwen3Arch, tp: int, tp_rank: int) -> torch.Tensor:
    hidden, hd, groups = arch.hidden_size, arch.head_dim, arch.num_kv_heads
    q_per_group = arch.num_heads // groups
    packed = torch.cat([q.reshape(groups, q_per_group * hd, hidden),
                        k.reshape(groups, hd, hidden), v.reshape(groups, hd, hidden)], dim=1)
    return packed.chunk(tp, dim=0)[tp_rank].reshape(-1, hidden).clone()


def _layer_to_mcore(hf: StateDict, arch: Qwen3Arch, i: int, tp: int, tp_rank: int,
                    te: bool) -> StateDict:
    src = f"model.layers.{i}."
    attn = src + "self_attn."
    norms = _norm_names(te)
    gate = _get(hf, src + "mlp.gate_proj.weight").chunk(tp, dim=0)[tp_rank]
    up = _get(hf, src + "mlp.up_proj.weight").chunk(tp, dim=0)[tp_rank]
    return {
        norms["input_layernorm"]: _get(hf, src + "input_layernorm.weight").clone(),
        norms["post_attention_layernorm"]: _get(hf, src + "post_attention_layernorm.weight").clone(),
        "self_attention.linear_qkv.weight": _qkv_shard(
            _get(hf, attn + "q_proj.weight"), _get(hf, attn + "k_proj.weight"),
            _get(hf, attn + "v_proj.weight"), arch, tp, tp_rank),
        "self_attention.linear_proj.weight":
            _get(hf, attn + "o_proj.weight").chunk(tp, dim=1)[tp_rank].clone(),
        "self_attention.q_layernorm.weight": _get(hf, attn + "q_norm.weight").clone(),
        "self_attention.k_layernorm.weight": _get(hf, attn + "k_norm.weight").clone(),
        "mlp.linear_fc1.weight": torch.cat([gate, up], dim=0),
        "mlp.linear_fc2.weight": _get(hf, src + "mlp.down_proj.weight").chunk(tp, dim=1)[tp_rank].clone(),
    }


def hf_to_mcore_shard(hf: StateDict, arch: Qwen3Arch, *, tp: int, tp_rank: int, pp: int,
                      pp_rank: int, te: bool) -> StateDict:
    """The Megatron state dict (local names, no ``_extra_state``) of shard (tp_rank, pp_rank)."""
    out: StateDict = {}
    first, last = pp_rank == 0, pp_rank == pp - 1
    if first:
        out["embedding.word_embeddings.weight"] = _vocab_shard(
            _get(hf, "model.embed_tokens.weight"), arch, tp, tp_rank)
    for local, i in enumerate(stage_layers(arch, pp, pp_rank)):
        for name, tensor in _layer_to_mcore(hf, arch, i, tp, tp_rank, te).items():
            out[f"decoder.layers.{local}.{name}"] = tensor
    if last:
        out["decoder.final_layernorm.weight"] = _get(hf, "model.norm.weight").clone()
        if not arch.tie_word_embeddings:
            out["output_layer.weight"] = _vocab_shard(_get(hf, "lm_head.weight"), arch, tp, tp_rank)
        elif not first:  # tied, PP > 1: the last stage's own copy of the embedding
            out["output_layer.weight"] = _vocab_shard(
                _get(hf, "model.embed_tokens.weight"), arch, tp, tp_rank)
    return out


def _unshard_qkv(shards: List[torch.Tensor], arch: Qwen3Arch):
    hidden, hd = arch.hidden_size, arch.head_dim
    q_per_group = arch.num_heads // arch.num_kv_heads
    packed = torch.cat([s.reshape(-1, (q_per_group + 2) * hd, hidden) for s in shards], dim=0)
    q, k, v = packed.split([q_per_group * hd, hd, hd], dim=1)
    return (q.reshape(-1, hidden).contiguous(), k.reshape(-1, hidden).contiguous(),
            v.reshape(-1, hidden).contiguous())


def _layer_to_hf(tp_shards: List[StateDict], arch: Qwen3Arch, local: int, i: int,
                 te: bool) -> StateDict:
    src = f"decoder.layers.{local}."
    dst = f"model.layers.{i}."
    norms = _norm_names(te)
    pick = lambda name: [s[src + name] for s in tp_shards]  # noqa: E731
    q, k, v = _unshard_qkv(pick("self_attention.linear_qkv.weight"), arch)
    halves = [s.chunk(2, dim=0) for s in pick("mlp.linear_fc1.weight")]
    return {
        dst + "input_layernorm.weight": pick(norms["input_layernorm"])[0],
        dst + "post_attention_layernorm.weight": pick(norms["post_attention_layernorm"])[0],
        dst + "self_attn.q_proj.weight": q,
        dst + "self_attn.k_proj.weight": k,
        dst + "self_attn.v_proj.weight": v,
        dst + "self_attn.o_proj.weight": torch.cat(pick("self_attention.linear_proj.weight"), 1),
        dst + "self_attn.q_norm.weight": pick("self_attention.q_layernorm.weight")[0],
        dst + "self_attn.k_norm.weight": pick("self_attention.k_layernorm.weight")[0],
        dst + "mlp.gate_proj.weight": torch.cat([h[0] for h in halves], dim=0),
        dst + "mlp.up_proj.weight": torch.cat([h[1] for h in halves], dim=0),
        dst + "mlp.down_proj.weight": torch.cat(pick("mlp.linear_fc2.weight"), dim=1),
    }


def mcore_stage_to_hf(tp_shards: List[StateDict], arch: Qwen3Arch, *, pp: int, pp_rank: int,
                      te: bool) -> StateDict:
    """HF-named weights of one pipeline stage from its TP shards (in tp_rank order).

    Tied models export no ``lm_head.weight`` (as transformers saves them); the last stage's
    copy of a tied embedding is dropped."""
    out: StateDict = {}
    vocab = arch.vocab_size
    if pp_rank == 0:
        out["model.embed_tokens.weight"] = torch.cat(
            [s["embedding.word_embeddings.weight"] for s in tp_shards], dim=0)[:vocab].contiguous()
    for local, i in enumerate(stage_layers(arch, pp, pp_rank)):
        out.update(_layer_to_hf(tp_shards, arch, local, i, te))
    if pp_rank == pp - 1:
        out["model.norm.weight"] = tp_shards[0]["decoder.final_layernorm.weight"]
        if not arch.tie_word_embeddings:
            out["lm_head.weight"] = torch.cat(
                [s["output_layer.weight"] for s in tp_shards], dim=0)[:vocab].contiguous()
    return {k: v.contiguous() for k, v in out.items()}


def mcore_shards_to_hf(shards: Dict[tuple, StateDict], arch: Qwen3Arch, *, tp: int, pp: int,
                       te: bool) -> StateDict:
    """Full HF state dict from every shard, keyed (tp_rank, pp_rank)."""
    out: StateDict = {}
    for pp_rank in range(pp):
        tp_shards = [shards[(r, pp_rank)] for r in range(tp)]
        out.update(mcore_stage_to_hf(tp_shards, arch, pp=pp, pp_rank=pp_rank, te=te))
    return out
