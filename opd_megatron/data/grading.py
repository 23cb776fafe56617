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


def grade_math(response: str, gold: str) -> bool:
    """True if math-verify finds the response's final answer equal to ``gold``.

    The gold answer is wrapped in ``$...$`` so bare LaTeX (``\\frac{14}{3}``) parses; the
    response is parsed with math-verify's defaults (boxed answers first, then LaTeX and plain
    expressions).
    """
    from math_verify import parse, verify

    text = final_text(response)
    if text is None or not text.strip():
        return False
    timeout = _timeout_s()
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    if not gold_parsed:
        gold_parsed = parse(gold, parsing_timeout=timeout)
    pred = parse(text, parsing_timeout=timeout)
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
