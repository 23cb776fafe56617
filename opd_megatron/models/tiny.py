"""Tiny Qwen3-architecture models and a character-level tokenizer, saved in HF format.

They are real checkpoints (``config.json`` + ``model.safetensors`` + tokenizer files), so
SGLang, transformers and the HF <-> Megatron converters treat them like Qwen3-8B.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional

# Characters of the arithmetic task; id order is fixed forever (checkpoints depend on it).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>"]
CHARS = list("0123456789+-*=;#") + [" ", "\n"]
PAD, EOS, BOS = SPECIAL_TOKENS
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 256


# The shapes of the embedded default (toy-task notes: 0.79M teacher, 0.2M student).
TEACHER_SHAPE = TinyShape(hidden_size=128, num_layers=4, intermediate_size=384)
STUDENT_SHAPE = TinyShape(hidden_size=96, num_layers=2, intermediate_size=256, num_heads=4,
                          num_kv_heads=2, head_dim=24)
# The shipped student with one layer (0.10M): the shape whose SFT curve has a long log-linear
# stretch well below the teacher (bench/sft_capacity.py), the faithful miniature of #19.
STUDENT_1LAYER_SHAPE = replace(STUDENT_SHAPE, num_layers=1)
SHAPES = {"teacher": TEACHER_SHAPE, "student": STUDENT_SHAPE, "student-1layer": STUDENT_1LAYER_SHAPE}
"""The shapes ``model.prepare: tiny-random:<name>`` builds (config.schema.RANDOM_SHAPES names them)."""


def vocab() -> Dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (one token per character)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char, newline too
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=PAD,
        model_max_length=TEACHER_SHAPE.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def qwen3_config(shape: TinyShape, vocab_size: int, *, pad_token_id: Optional[int] = None,
                 eos_token_id: Optional[int] = None, bos_token_id: Optional[int] = None):
    """A Qwen3Config of ``shape``; token ids default to the char tokenizer's (pass the ids of
    another tokenizer, e.g. ``opd_megatron.models.tiny_bpe``, to use it)."""
    from transformers import Qwen3Config

    ids = vocab()
    if pad_token_id is None and eos_token_id is None:
        pad_token_id, eos_token_id, bos_token_id = ids[PAD], ids[EOS], ids[BOS]
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=shape.tie_word_embeddings,
        attention_bias=False,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        torch_dtype="float32",
    )


def save_random_model(out_dir: str | Path, shape: TinyShape, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Qwen3 + the char tokenizer as an HF checkpoint."""
    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    cfg = qwen3_config(shape, vocab_size=len(tokenizer))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    torch.random.set_rng_state(gen_state)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
