"""A Qwen3-like tokenizer at toy scale, and random tiny Qwen3 checkpoints that use it.

What it shares with Qwen3's tokenizer, so the tiny models exercise the code paths the real
ones do: byte-level BPE with real merges (``Evaluate`` is one token), every digit its own
token, ChatML special tokens after the BPE vocabulary (``<|endoftext|>`` pad, ``<|im_start|>``,
``<|im_end|>`` eos of the chat models), ``<think>``/``</think>`` as added tokens that are not
special (as in Qwen3, decoding with ``skip_special_tokens`` keeps them), a Qwen3-style chat
template with ``enable_thinking``, and an embedding padded past the tokenizer's length (Qwen3:
151,936 rows for 151,669 tokens), so the logits have rows no token maps to.

The BPE is learnt with ``tokenizers``' BpeTrainer from text the caller passes (the prepare
step passes the generated math task, see ``opd_megatron.run.prepare.bpe_training_text``) plus
the fixed ``FILLER`` below; the same text always gives a byte-identical ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, List

from opd_megatron.models.tiny import TinyShape, qwen3_config

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
"""Special added tokens, in Qwen3's order (its ids 151643-151645), right after the BPE vocab."""
THINK_TOKENS = (THINK, END_THINK)
"""Added tokens that are not special (Qwen3: 151667, 151668, ``special: false``)."""
PAD, EOS = ENDOFTEXT, IM_END
"""pad (also the eos of base models) and the eos of chat models."""

BPE_VOCAB_SIZE = 800
"""Most tokens the BPE may learn (256 byte tokens + merges); the corpus yields fewer."""
MIN_MERGE_FREQUENCY = 2
VOCAB_MULTIPLE = 64
MIN_PADDED_ROWS = 16
"""The embedding has ``len(tokenizer)`` rounded up to a multiple of 64 with at least 16 rows
no token maps to."""
MAX_POSITIONS = 512
"""Context of the BPE tiny models: a chat-templated task prompt + solution is ~70 tokens and
the longest eval/rollout settings of the tiny recipes stay far below 512."""

FILLER = (
    "You are a helpful assistant. Think step by step, then give the final answer.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "The answer is the number that remains after every operation is done in order.",
    "Multiplication comes before addition and subtraction; work from left to right.",
    "A fraction is in lowest terms when its numerator and denominator share no factor.",
    "Divide both the numerator and the denominator by their greatest common divisor.",
    "What is the remainder when the result is divided by one hundred?",
    "Let me check the calculation again before I write the answer.",
    "First, I compute the products. Then I add and subtract the terms.",
    "This problem asks for a simplified fraction; the result should be exact.",
    "Hello! How can I help you today? Here is a short summary of the steps.",
    "The question is about arithmetic, so the answer should be a whole number.",
    "Write your answer as a single number, without units or extra words.",
    "Solve the following problem and explain each step clearly.",
    "If the denominator is one, the fraction is simply an integer.",
    "We keep every intermediate result between zero and ninety-nine.",
    "The user wants a short answer; the assistant replies with the result.",
    "Good question. Let us work it out together, one operation at a time.",
    "Answer in English. Keep the explanation brief and precise.",
    "Therefore the final answer is shown in the box below.",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
    "<|im_start|>assistant\nHello! How can I help you today?<|im_end|>\n",
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is the answer?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nThe answer is in the box.<|im_end|>\n",
)
"""Plain English and instruction text mixed into the BPE corpus, so common words merge too."""

CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- set content = m.content if m.content is string else '' %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set reasoning = '' %}"
    "{%- if m.reasoning_content is string %}{%- set reasoning = m.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    # Like Qwen3: the reasoning of turns before the last user message is dropped; the last
    # turn always shows its (possibly empty) think block.
    "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}"
    "{{- content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
"""ChatML turns; assistant turns carry ``<think>\\n...\\n</think>\\n\\n``; with
``add_generation_prompt`` an open assistant turn, and with ``enable_thinking=False`` an empty
think block after it (Qwen3's switch)."""


def _strip_added(text: str) -> str:
    """Training text without the added tokens: they are matched whole before BPE runs, so
    the BPE must not learn merges for them."""
    for t in SPECIAL_TOKENS + THINK_TOKENS:
        text = text.replace(t, "\n")
    return text


def build_tokenizer(texts: Iterable[str]):
    """A byte-level BPE ``PreTrainedTokenizerFast`` learnt from ``texts`` + ``FILLER``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=MIN_MERGE_FREQUENCY,
                                  show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus: List[str] = [_strip_added(t) for t in (*texts, *FILLER)]
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   extra_special_tokens=[IM_START, IM_END],
                                   model_max_length=MAX_POSITIONS, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def padded_vocab_size(num_tokens: int) -> int:
    """Embedding rows for ``num_tokens`` tokens: a multiple of 64, at least 16 rows spare."""
    return -(-(num_tokens + MIN_PADDED_ROWS) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def bpe_shape(shape: TinyShape) -> TinyShape:
    """The tiny shape with the BPE models' longer context."""
    return dataclasses.replace(shape, max_position_embeddings=MAX_POSITIONS)


def save_random_bpe_model(out_dir: str | Path, shape: TinyShape, seed: int, texts: Iterable[str]) -> Path:
    """A randomly initialised tiny Qwen3 with the BPE tokenizer learnt from ``texts``, as an
    HF checkpoint: ``vocab_size`` padded past ``len(tokenizer)``, eos ``<|im_end|>`` (model
    config and generation config), pad ``<|endoftext|>``."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts)
    eos, pad = tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(PAD)
    cfg = qwen3_config(bpe_shape(shape), vocab_size=padded_vocab_size(len(tokenizer)),
                       pad_token_id=pad, eos_token_id=eos, bos_token_id=None)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    torch.random.set_rng_state(gen_state)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
