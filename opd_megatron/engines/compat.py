"""Check, before a run starts, that teacher and student read tokens the same way.

The teacher scores the student's token ids as they are; if the two tokenizers differ (another
vocabulary, other special tokens or ids, another chat template) every teacher logprob silently
refers to a different text and the run trains on noise. So any difference is a ConfigError:
one line naming both tokenizer paths and the first thing that differs, in this order:

1. the vocabulary (every token and its id, added tokens included);
2. the added tokens (content, id, special or not: ``<|im_start|>`` ... ``<think>``);
3. the response end: the token ``data.eos_token`` names (one token, same id in both), or,
   when it is unset, the two eos ids; then the pad, bos and unk tokens and ids;
4. the ids of a few probe texts (digits, words, unicode), which catch other merges or
   pre-tokenizers over one vocabulary;
5. with ``use_chat_template``: the token ids of the chat template's output for a probe
   conversation (system + user + assistant with a think block; system + user with the
   generation prompt, with and without ``enable_thinking``).

Works for any directory ``AutoTokenizer`` loads: ``tokenizer.json`` ones and sentencepiece-only
ones (``tokenizer.model``). Directories whose tokenizer files are byte-identical are equal
without loading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from opd_megatron.config.schema import ModelConfig
from opd_megatron.errors import ConfigError

TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                        "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json",
                        "merges.txt", "vocab.txt")
"""Every file of an HF tokenizer directory (byte-identical sets need no further check)."""

_PROBE_TEXTS = ("8-1*5*6=1*5=5;5*6=30;8-30=78;#78", "Hello, world! 12 + 30 = 42\n",
                "Evaluate 8-1*5*6 modulo 100.\n\n\\boxed{\\frac{3}{4}}", "naïve café: ½ ≈ 0.5 ✓")
_PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Evaluate 8-1*5*6 modulo 100."},
    {"role": "assistant", "content": "<think>\n1*5=5;5*6=30;8-30=78\n</think>\n\n\\boxed{78}"},
]
_PROBE_RENDERS: Tuple[Tuple[str, int, Dict[str, Any]], ...] = (
    ("system+user+assistant", 3, {"add_generation_prompt": False}),
    ("system+user with the generation prompt", 2, {"add_generation_prompt": True}),
    ("system+user with the generation prompt and enable_thinking=False", 2,
     {"add_generation_prompt": True, "enable_thinking": False}),
)
"""(what, messages used, apply_chat_template arguments) of each probe rendering."""


def tokenizer_dir(model: ModelConfig) -> str:
    return model.tokenizer or model.path


def _load(model: ModelConfig, role: str):
    from transformers import AutoTokenizer

    path = tokenizer_dir(model)
    try:
        return path, AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many kinds for an unreadable directory
        key = "tokenizer" if model.tokenizer else "path"
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{role}.{key}: cannot load a tokenizer from '{path}' "
                          f"({exc.__class__.__name__}: {reason})") from None


def same_files(a: str, b: str) -> bool:
    """Both directories hold the same tokenizer files with the same bytes."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    for name in TOKENIZER_FILE_NAMES:
        fa, fb = pa / name, pb / name
        if fa.is_file() != fb.is_file() or (fa.is_file() and fa.read_bytes() != fb.read_bytes()):
            return False
    return True


def _vocab_difference(sv: Dict[str, int], tv: Dict[str, int]) -> Optional[str]:
    if sv == tv:
        return None
    changed = sorted(t for t in sv.keys() & tv.keys() if sv[t] != tv[t])
    only_s, only_t = sorted(sv.keys() - tv.keys()), sorted(tv.keys() - sv.keys())
    examples = [f"{t!r} is id {sv[t]} vs {tv[t]}" for t in changed[:2]]
    examples += [f"{t!r} only in the student's" for t in only_s[:1]]
    examples += [f"{t!r} only in the teacher's" for t in only_t[:1]]
    return (f"vocabulary differs ({len(sv)} vs {len(tv)} tokens, {len(changed)} with other ids; "
            f"e.g. {', '.join(examples)})")


def _added_tokens(tok) -> Dict[int, Tuple[str, bool]]:
    return {int(i): (str(t.content), bool(t.special)) for i, t in tok.added_tokens_decoder.items()}


def _added_difference(student_tok, teacher_tok) -> Optional[str]:
    sa, ta = _added_tokens(student_tok), _added_tokens(teacher_tok)
    if sa == ta:
        return None
    i = min(k for k in sa.keys() | ta.keys() if sa.get(k) != ta.get(k))

    def say(entry: Optional[Tuple[str, bool]]) -> str:
        return "none" if entry is None else f"{entry[0]!r} ({'special' if entry[1] else 'not special'})"

    return f"special/added tokens differ (id {i}: {say(sa.get(i))} vs {say(ta.get(i))})"


def _token_id(tok, token: str) -> Optional[int]:
    return tok.get_vocab().get(token)


def eos_token_problem(tok, path: str, eos_token: str, role: str) -> Optional[str]:
    """Why ``eos_token`` cannot end responses with this tokenizer, or None."""
    if _token_id(tok, eos_token) is None:
        return f"data.eos_token: {eos_token!r} is not a token of the {role} tokenizer '{path}'"
    return None


def _roles_difference(student_tok, teacher_tok, eos_token: Optional[str]) -> Optional[str]:
    if eos_token is not None:
        s_id, t_id = _token_id(student_tok, eos_token), _token_id(teacher_tok, eos_token)
        if s_id != t_id:
            return f"data.eos_token {eos_token!r} has id {s_id} vs {t_id}"
    names = ("pad", "bos", "unk") if eos_token is not None else ("eos", "pad", "bos", "unk")
    for name in names:
        s = (getattr(student_tok, f"{name}_token"), getattr(student_tok, f"{name}_token_id"))
        t = (getattr(teacher_tok, f"{name}_token"), getattr(teacher_tok, f"{name}_token_id"))
        if s != t:
            hint = " (set data.eos_token to the token that ends responses)" if name == "eos" else ""
            return f"{name} token differs ({s[0]!r} id {s[1]} vs {t[0]!r} id {t[1]}){hint}"
    return None


def _render(tok, num_messages: int, kwargs: Dict[str, Any]) -> Tuple[Optional[str], List[int]]:
    """The template's text and token ids for the probe (text None: no template or it fails)."""
    if not getattr(tok, "chat_template", None):
        return None, []
    try:
        text = tok.apply_chat_template(_PROBE_CONVERSATION[:num_messages], tokenize=False, **kwargs)
    except Exception as exc:  # a template may refuse the probe (e.g. no system role)
        return f"<template error: {exc}>", []
    return text, list(tok.encode(text, add_special_tokens=False))


def _first_text_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"from character {i}: {a[i:i + 40]!r} vs {b[i:i + 40]!r}"


def _template_difference(student_tok, teacher_tok) -> Optional[str]:
    for what, num, kwargs in _PROBE_RENDERS:
        (s_text, s_ids), (t_text, t_ids) = _render(student_tok, num, kwargs), _render(teacher_tok, num, kwargs)
        if s_text is None or t_text is None:
            if s_text != t_text:
                which = "student's" if s_text is None else "teacher's"
                return f"chat template: the {which} tokenizer has none (data.chat_template=tokenizer)"
            return None
        if s_text != t_text:
            return f"chat template output differs on {what} ({_first_text_difference(s_text, t_text)})"
        if s_ids != t_ids:
            k = next((k for k, (x, y) in enumerate(zip(s_ids, t_ids)) if x != y), min(len(s_ids), len(t_ids)))
            return (f"chat template output tokenizes differently on {what} "
                    f"(token {k}: {s_ids[k:k + 3]} vs {t_ids[k:k + 3]})")
    return None


def first_difference(student_tok, teacher_tok, *, use_chat_template: bool,
                     eos_token: Optional[str] = None) -> Optional[str]:
    """A short one-line description of the first mismatch, or None when they agree."""
    problem = (_vocab_difference(student_tok.get_vocab(), teacher_tok.get_vocab())
               or _added_difference(student_tok, teacher_tok)
               or _roles_difference(student_tok, teacher_tok, eos_token))
    if problem:
        return problem
    for text in _PROBE_TEXTS:
        a, b = student_tok.encode(text, add_special_tokens=False), teacher_tok.encode(text, add_special_tokens=False)
        if a != b:
            return f"they tokenize {text!r} differently ({a[:10]} vs {b[:10]})"
    if use_chat_template:
        return _template_difference(student_tok, teacher_tok)
    return None


def check_eos_token(model: ModelConfig, role: str, eos_token: Optional[str]) -> None:
    """``data.eos_token`` (when set) is one token of this model's tokenizer."""
    if eos_token is None:
        return
    path, tok = _load(model, role)
    problem = eos_token_problem(tok, path, eos_token, role)
    if problem:
        raise ConfigError(problem)


def check_tokenizers_compatible(student: ModelConfig, teacher: ModelConfig, *,
                                use_chat_template: bool, eos_token: Optional[str] = None) -> None:
    """Raise ConfigError if the teacher cannot score the student's token ids as they are.

    ``use_chat_template``: prompts are rendered with the tokenizer's chat template
    (``data.chat_template == "tokenizer"``), so the templates must agree too.
    ``eos_token``: ``data.eos_token``, the token that ends responses for both (then the two
    tokenizers' own eos may differ, as a base student's and an instruct teacher's do).
    """
    if same_files(tokenizer_dir(student), tokenizer_dir(teacher)):
        check_eos_token(student, "student", eos_token)
        return
    student_path, student_tok = _load(student, "student")
    teacher_path, teacher_tok = _load(teacher, "teacher")
    if eos_token is not None:
        for tok, path, role in ((student_tok, student_path, "student"), (teacher_tok, teacher_path, "teacher")):
            problem = eos_token_problem(tok, path, eos_token, role)
            if problem:
                raise ConfigError(problem)
    problem = first_difference(student_tok, teacher_tok, use_chat_template=use_chat_template,
                               eos_token=eos_token)
    if problem:
        raise ConfigError(
            f"teacher.tokenizer: teacher tokenizer '{teacher_path}' does not match student tokenizer "
            f"'{student_path}': {problem}; the teacher scores the student's token ids, so both need "
            "one tokenizer")
