"""Qwen3 dense models as Megatron-Core GPTModels, built from an HF ``config.json``.

``QWEN3_SHAPES`` names the real Qwen3 shapes (HF config fields), so plans and FLOPs
estimates can use them without any file. ``build_gpt_model`` turns HF config fields into a
``TransformerConfig`` + layer spec: the Megatron "local" spec on CPU, the Transformer Engine
spec on GPU (chosen by ``use_te=None``: TE is imported only when CUDA is present).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from opd_megatron.errors import ConfigError

from opd_megatron.models.qwen3_shapes import QWEN3_SHAPES
from opd_megatron.models.shape import ModelShape, decoder_shape_fields

_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Qwen3Arch(ModelShape):
    """The architecture fields the learner needs: the decoder shape (ModelShape, one parser)
    plus rope and norm settings, normalised from an HF config."""

    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960

    @classmethod
    def from_hf(cls, hf: Dict[str, Any], source: str = "config") -> "Qwen3Arch":
        missing = [k for k in _REQUIRED_FIELDS if k not in hf]
        if missing:
            raise ConfigError(f"{source}: missing Qwen3 config field(s) {missing}")
        if hf.get("model_type", "qwen3") != "qwen3":
            raise ConfigError(f"{source}: model_type {hf.get('model_type')!r} is not 'qwen3'")
        rope = hf.get("rope_parameters") or {}  # transformers 5 moved rope_theta here
        return cls(
            **decoder_shape_fields(hf, source),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 40960)),
        )


def read_hf_config(model_dir: str | Path) -> Dict[str, Any]:
    """The parsed ``config.json`` of an HF model directory (ConfigError naming the file)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; expected an HF model directory "
                          "(config.json + model.safetensors + tokenizer)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


def pad_token_id(hf_config: Dict[str, Any]) -> int:
    """Token used for filler rows of microbatches (any id works: they are masked out)."""
    pad = hf_config.get("pad_token_id")
    return int(pad) if isinstance(pad, int) else 0


def shape_config(name: str) -> Dict[str, Any]:
    """HF config fields of a named Qwen3 shape (e.g. 'qwen3-8b')."""
    if name not in QWEN3_SHAPES:
        raise ConfigError(f"unknown Qwen3 shape {name!r}; known: {sorted(QWEN3_SHAPES)}")
    return dict(QWEN3_SHAPES[name], model_type="qwen3")


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """Vocab rows Megatron allocates: divisible by tp (and by 128*tp for real vocabularies,
    so GEMMs stay aligned). Padded rows are zero and masked out of every softmax."""
    multiple = tp * (128 if vocab_size >= 16384 else 1)
    return -(-vocab_size // multiple) * multiple


def check_parallel_fits(arch: Qwen3Arch, tp: int, pp: int, source: str = "model") -> None:
    """Megatron's divisibility rules, as ConfigErrors before anything is built."""
    if arch.num_heads % tp or arch.num_kv_heads % tp:
        raise ConfigError(f"parallel.tp={tp} must divide {source}'s {arch.num_heads} attention"
                          f" heads and {arch.num_kv_heads} KV heads")
    if arch.intermediate_size % tp:
        raise ConfigError(f"parallel.tp={tp} must divide {source}'s intermediate_size "
                          f"{arch.intermediate_size}")
    if arch.num_layers % pp:
        raise ConfigError(f"parallel.pp={pp} must divide {source}'s {arch.num_layers} layers")


def te_available() -> bool:
    """Transformer Engine is usable only with CUDA; never import it otherwise."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # not installed or broken build: fall back to the local spec
        return False
    return True


def transformer_config(arch: Qwen3Arch, *, tp: int, pp: int, dtype: torch.dtype,
                       per_token_loss: bool = True):
    """The Megatron TransformerConfig of a Qwen3 model (fusions off on CPU)."""
    from megatron.core.transformer import TransformerConfig

    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.intermediate_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,  # without it every PP stage builds all layers
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        use_cpu_initialization=not on_gpu,
        perform_initialization=False,  # weights always come from an HF checkpoint
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        calculate_per_token_loss=per_token_loss,
        deallocate_pipeline_outputs=False,
    )


def layer_spec(use_te: bool):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")


_PARTITION_DIMS = {"word_embeddings.weight": 0, "output_layer.weight": 0, "linear_qkv.weight": 0,
                   "linear_fc1.weight": 0, "linear_proj.weight": 1, "linear_fc2.weight": 1}


def mark_tensor_parallel_params(model: torch.nn.Module) -> None:
    """Set Megatron's ``tensor_model_parallel`` / ``partition_dim`` attributes on sharded weights.

    Megatron sets them only inside its random initialisers; with ``perform_initialization``
    off (weights come from HF) they would be missing, and the grad-norm, which counts a
    parameter without them on TP rank 0 only, would silently drop the other ranks' shards."""
    from megatron.core.tensor_parallel.layers import (
        set_defaults_if_not_set_tensor_model_parallel_attributes,
    )

    for name, param in model.named_parameters():
        if not hasattr(param, "tensor_model_parallel"):
            dim = next((d for suffix, d in _PARTITION_DIMS.items() if name.endswith(suffix)), None)
            if dim is not None:
                param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, dim, 1
        set_defaults_if_not_set_tensor_model_parallel_attributes(param)


def build_gpt_model(arch: Qwen3Arch, *, tp: int, pp: int, dtype: torch.dtype = torch.float32,
                    use_te: Optional[bool] = None, per_token_loss: bool = True):
    """This rank's GPTModel stage (parallel state must be initialised). Weights are left
    uninitialised: load them with ``convert.load_hf_into``."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    use_te = te_available() if use_te is None else use_te
    check_parallel_fits(arch, tp, pp)
    cfg = transformer_config(arch, tp=tp, pp=pp, dtype=dtype, per_token_loss=per_token_loss)
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=layer_spec(use_te),
        vocab_size=padded_vocab_size(arch.vocab_size, tp),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
    )
    model.use_te = use_te
    mark_tensor_parallel_params(model)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model
