"""The shape of a dense decoder (Qwen3 / Llama style: SwiGLU MLP, GQA attention), parsed once
from an HF ``config.json``: the FLOPs account's ``ModelShape`` and the learner's ``Qwen3Arch``
(a ModelShape plus rope and norm settings) are both built by ``decoder_shape_fields``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from opd_megatron.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only (Qwen3-style, SwiGLU, GQA) model that fix its FLOPs."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    name: str = ""

    @property
    def d_attn(self) -> int:
        """Query width (num_heads * head_dim); sets the attention-score FLOPs."""
        return self.num_heads * self.head_dim

    @property
    def linears(self) -> Dict[str, Tuple[int, int]]:
        """(in, out) features of one block's matmuls, by Megatron name: fused q/k/v, the
        attention output, fused SwiGLU gate/up, down."""
        d, kv, ffn = self.hidden_size, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"linear_qkv": (d, self.d_attn + 2 * kv), "linear_proj": (self.d_attn, d),
                "linear_fc1": (d, 2 * ffn), "linear_fc2": (ffn, d)}

    @property
    def layer_matmul_params(self) -> int:
        """Matmul weights of one block: q/k/v/o projections and SwiGLU gate/up/down."""
        return sum(i * o for i, o in self.linears.values())

    @property
    def layer_params(self) -> int:
        """All weights of one block: the matmuls plus two RMSNorms and the q/k norms."""
        return self.layer_matmul_params + 2 * self.hidden_size + 2 * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        """All stored parameters (what a model card quotes: 8.19e9 for Qwen3-8B)."""
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params
        return self.num_layers * self.layer_params + self.hidden_size + self.embedding_params + lm_head

    @property
    def flops_params(self) -> int:
        """N of the FLOPs formula: matmul weights of the blocks + the lm_head (no input lookup)."""
        return self.num_layers * self.layer_matmul_params + self.embedding_params

    @property
    def kv_values_per_token(self) -> int:
        """Values one token puts in the KV cache: a key and a value per layer and KV head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


def decoder_shape_fields(hf: Dict[str, Any], source: str = "config.json") -> Dict[str, Any]:
    """The fields that fix a dense decoder's shape, normalised from an HF config dict: what the
    learner (``Qwen3Arch``) and the FLOPs account (``ModelShape``) both read. Defaults as HF:
    no ``num_key_value_heads`` means MHA, no ``head_dim`` means hidden_size / heads."""
    try:
        heads = int(hf["num_attention_heads"])
        return dict(
            hidden_size=int(hf["hidden_size"]), intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
            vocab_size=int(hf["vocab_size"]),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except KeyError as err:
        raise ConfigError(f"{source}: missing key {err.args[0]!r}; "
                          "pass an HF config.json of a dense decoder model") from None

