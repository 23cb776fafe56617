"""Answer extraction and grading: math-verify for math, letter extraction for GPQA.

Reasoning models (Qwen3 thinking mode) write ``<think>...</think>`` before the answer. Only
the text after the last ``</think>`` is graded: a number inside the reasoning is not an
answer, and a response whose thinking never closed (cut at max tokens) has no answer.
"""

from __future__ import annotations

import re
import threading
from typing import Optional

THINK_CLOSE = "</think>"
CHOICE_LETTERS = "ABCD"

# Most explicit first; the last match of the first pattern that matches wins.
_CHOICE_PATTERNS = [
    re.compile(r"\\boxed\{\s*\(?([A-D])\)?\s*\}"),
    re.compile(r"(?i:answer)\s*(?i:is|:)?\s*[:\-]?\s*\**\s*\(?\$?\\?(?:text\{)?([A-D])\b"),
    re.compile(r'"(?i:answer)"\s*:\s*"([A-D])"'),
    re.compile(r"\(([A-D])\)"),
    re.compile(r"\b([A-D])\b\s*$"),
]


def final_text(response: str) -> Optional[str]:
    """The part of a response that may hold the answer; None if thinking never finished."""
    if THINK_CLOSE in response:
        return response.rsplit(THINK_CLOSE, 1)[1]
    if "<think>" in response:
        return None
    return response


def _timeout_s() -> Optional[int]:
    # math-verify's timeouts use SIGALRM, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A digit-group separator between a digit and exactly three digits: a thin space (``\,``, ``\:``,
# ``\;``, ``\!``, ``\ ``, ``~``, U+2009, U+202F), a no-break space or a plain space ("1 000").
_GROUP_SEP = re.compile(r"(?<=\d)(?:\\[,:;! ]|\\thinspace\b|~|[ \u00a0\u2009\u202f])(?=\d{3}(?!\d))")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree\b|\u00b0")


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced), or None: a
    response that corrects itself ends with the box it means."""
    starts = [m.end() for m in _BOX_OPEN.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def normalize_answer(text: str) -> str:
    """Digit-group separators and degree signs removed (math-verify reads ``1\\,000`` as 0 and
    knows no ``\\degree``)."""
    previous = None
    while previous != text:
        previous, text = text, _GROUP_SEP.sub("", text)
    return _DEGREE.sub("", text)


def grade_math(response: str, gold: str) -> bool:
    """True if math-verify finds the response's final answer equal to ``gold``.

    The final answer is the last ``\\boxed{}`` / ``\\fbox{}`` after the thinking, parsed as LaTeX;
    without a box, math-verify's own extraction over the text (LaTeX, then plain expressions).
    Answer and gold lose digit-group separators and degree signs first (``normalize_answer``).
    The gold is wrapped in ``$...$`` so bare LaTeX (``\\frac{14}{3}``) parses.
    """
    from math_verify import parse, verify

    text = final_text(response)
    if text is None or not text.strip():
        return False
    timeout = _timeout_s()

    def parsed(answer: str, wrap: bool) -> list:
        answer = normalize_answer(answer)
        return (wrap and parse(f"${answer}$", parsing_timeout=timeout)) or parse(answer, parsing_timeout=timeout)

    gold_parsed = parsed(gold, wrap=True)
    boxed = last_boxed(text)
    pred = parsed(boxed, wrap=True) if boxed is not None else parsed(text, wrap=False)
    if not gold_parsed or not pred:
        return False
    return bool(verify(gold_parsed, pred, timeout_seconds=timeout))


def extract_choice(response: str) -> Optional[str]:
    """The chosen letter A-D of a multiple-choice response, or None."""
    text = final_text(response)
    if not text:
        return None
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def grade_choice(response: str, gold_letter: str) -> bool:
    return extract_choice(response) == gold_letter.strip().upper()
