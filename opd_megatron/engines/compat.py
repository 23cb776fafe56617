"""Check, before a run starts, that teacher and student read tokens the same way.

The teacher scores the student's token ids as they are; if the two tokenizers differ (another
vocabulary, other special-token ids, another chat template) every teacher logprob silently
refers to a different text and the run trains on noise. So any difference is a ConfigError
naming both paths and the first mismatch.
"""

from __future__ import annotations

from typing import Optional

from opd_megatron.config.schema import ModelConfig
from opd_megatron.errors import ConfigError

_PROBE_TEXTS = ("8-1*5*6=1*5=5;5*6=30;8-30=78;#78", "Hello, world! 12 + 30 = 42\n")
_PROBE_MESSAGES = [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "3+4*2="}]


def _load(model: ModelConfig, role: str):
    from transformers import AutoTokenizer

    path = model.tokenizer or model.path
    try:
        return path, AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        key = "tokenizer" if model.tokenizer else "path"
        raise ConfigError(f"{role}.{key}: cannot load a tokenizer from '{path}' ({exc})") from exc


def _chat_text(tokenizer) -> Optional[str]:
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template(_PROBE_MESSAGES, tokenize=False,
                                         add_generation_prompt=True)


def first_difference(student_tok, teacher_tok, *, use_chat_template: bool) -> Optional[str]:
    """A short description of the first mismatch, or None when they agree."""
    if len(student_tok) != len(teacher_tok):
        return f"vocabulary sizes differ ({len(student_tok)} vs {len(teacher_tok)})"
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        diff = sorted(set(student_tok.get_vocab().items()) ^ set(teacher_tok.get_vocab().items()))
        return f"vocabularies differ (e.g. {diff[:3]})"
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(student_tok, name) != getattr(teacher_tok, name):
            return (f"{name} differs ({getattr(student_tok, name)} vs "
                    f"{getattr(teacher_tok, name)})")
    for text in _PROBE_TEXTS:
        a, b = student_tok.encode(text), teacher_tok.encode(text)
        if a != b:
            return f"they tokenize {text!r} differently ({a[:10]} vs {b[:10]})"
    if use_chat_template:
        a, b = _chat_text(student_tok), _chat_text(teacher_tok)
        if a != b:
            return f"chat templates render differently ({a!r:.80} vs {b!r:.80})"
    return None


def check_tokenizers_compatible(student: ModelConfig, teacher: ModelConfig, *,
                                use_chat_template: bool) -> None:
    """Raise ConfigError if the teacher cannot score the student's token ids as they are.

    ``use_chat_template``: prompts are rendered with the tokenizer's chat template
    (``data.chat_template == "tokenizer"``), so the templates must agree too.
    """
    student_path, student_tok = _load(student, "student")
    teacher_path, teacher_tok = _load(teacher, "teacher")
    problem = first_difference(student_tok, teacher_tok, use_chat_template=use_chat_template)
    if problem:
        raise ConfigError(
            f"teacher tokenizer '{teacher_path}' is not compatible with student tokenizer "
            f"'{student_path}': {problem}. Use a teacher of the same tokenizer family (or set "
            "teacher.tokenizer / student.tokenizer to matching tokenizers)")
