"""The real Qwen3 dense shapes, as the HF ``config.json`` fields that fix the architecture.

One table for the learner (building models without files), placement (memory estimates) and
the FLOPs account. Values are those of the published configs (huggingface.co/Qwen/Qwen3-*):
all use GQA with 8 KV heads, head_dim 128, QK-norm, rope theta 1e6, vocab 151,936; the
0.6B-4B models tie input and output embeddings. ``-base`` checkpoints share their shape.
"""

from __future__ import annotations

from typing import Any, Dict

QWEN3_COMMON: Dict[str, Any] = dict(
    vocab_size=151936, head_dim=128, num_key_value_heads=8, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, max_position_embeddings=40960, hidden_act="silu",
)

QWEN3_SHAPES: Dict[str, Dict[str, Any]] = {
    "qwen3-0.6b": dict(QWEN3_COMMON, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-1.7b": dict(QWEN3_COMMON, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-4b": dict(QWEN3_COMMON, hidden_size=2560, intermediate_size=9728,
                     num_hidden_layers=36, num_attention_heads=32, tie_word_embeddings=True),
    "qwen3-8b": dict(QWEN3_COMMON, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, tie_word_embeddings=False),
    "qwen3-14b": dict(QWEN3_COMMON, hidden_size=5120, intermediate_size=17408,
                      num_hidden_layers=40, num_attention_heads=40, tie_word_embeddings=False),
    "qwen3-32b": dict(QWEN3_COMMON, hidden_size=5120, intermediate_size=25600,
                      num_hidden_layers=64, num_attention_heads=64, tie_word_embeddings=False),
}

ALIASES: Dict[str, str] = {f"{name}-base": name for name in QWEN3_SHAPES if name != "qwen3-32b"}
"""Base checkpoints (no Qwen3-32B-Base was published) -> the shape they share."""
