"""IFEval (Zhou et al. 2023, ``google/IFEval``): prompts with verifiable instructions, each
checked by a function of the response. The 25 instruction types of the paper, written here
from its definitions; the reported figure is strict prompt-level accuracy (every instruction of
the prompt followed). ``instruction_accuracy`` gives the instruction-level figure.

A problem's gold "answer" is the JSON of its ``instruction_id_list`` and ``kwargs``, so IFEval
goes through the same ``Benchmark`` / ``evaluate`` path as the math and choice benchmarks.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List

from opd_megatron.errors import ConfigError

Check = Callable[..., bool]


def _compare(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"unknown relation {relation!r} (less than | at least)")


def _words(text: str) -> List[str]:
    return re.findall(r"\b\w+\b", text)


def _sentences(text: str) -> List[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _english(text: str) -> bool:
    return _language(text) == "en"


def _language(text: str) -> str:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is randomised; fix it so grading is deterministic
    try:
        return detect(text)
    except LangDetectException:
        return ""


def _highlights(text: str) -> int:
    single = [m for m in re.findall(r"\*[^\n\*]*\*", text) if m.strip("*").strip()]
    double = [m for m in re.findall(r"\*\*[^\n\*]*\*\*", text) if m.strip("*").strip()]
    return len(single) + len(double)


def _json(text: str) -> bool:
    body = text.strip()
    body = re.sub(r"^```(?:json|Json|JSON)?\s*", "", body)
    body = re.sub(r"\s*```$", "", body)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _postscript(text: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip().lower()
    if marker == "p.p.s":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "p.s.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker) + r".*$"
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _nth_paragraph(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= len(paragraphs):
        return False
    words = paragraphs[nth_paragraph - 1].strip().split()
    first = re.sub(r"^[^\w]+|[^\w]+$", "", words[0]).lower() if words else ""
    return first == first_word.strip().lower()


def _two_responses(text: str) -> bool:
    parts = [p.strip() for p in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


CHECKS: Dict[str, Check] = {
    "keywords:existence": lambda r, keywords: all(re.search(re.escape(k), r, re.I) for k in keywords),
    "keywords:frequency": lambda r, keyword, frequency, relation: _compare(
        len(re.findall(re.escape(keyword), r, re.I)), relation, frequency),
    "keywords:forbidden_words": lambda r, forbidden_words: not any(
        re.search(r"\b" + re.escape(w) + r"\b", r, re.I) for w in forbidden_words),
    "keywords:letter_frequency": lambda r, letter, let_frequency, let_relation: _compare(
        r.lower().count(letter.lower()), let_relation, let_frequency),
    "language:response_language": lambda r, language: _language(r) == language,
    "length_constraints:number_sentences": lambda r, num_sentences, relation: _compare(
        len(_sentences(r)), relation, num_sentences),
    "length_constraints:number_paragraphs": lambda r, num_paragraphs: (
        all(p.strip() for p in re.split(r"\s?\*\*\*\s?", r.strip()))
        and len(re.split(r"\s?\*\*\*\s?", r.strip())) == num_paragraphs),
    "length_constraints:number_words": lambda r, num_words, relation: _compare(len(_words(r)), relation, num_words),
    "length_constraints:nth_paragraph_first_word": _nth_paragraph,
    "detectable_content:number_placeholders": lambda r, num_placeholders: len(
        re.findall(r"\[.*?\]", r)) >= num_placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": lambda r, num_bullets: len(
        re.findall(r"^\s*\*[^\*].*$", r, re.M)) + len(re.findall(r"^\s*-.*$", r, re.M)) == num_bullets,
    "detectable_format:constrained_response": lambda r: any(
        o in r for o in ("My answer is yes.", "My answer is no.", "My answer is maybe.")),
    "detectable_format:number_highlighted_sections": lambda r, num_highlights: _highlights(r) >= num_highlights,
    "detectable_format:multiple_sections": lambda r, section_spliter, num_sections: len(
        re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)) - 1 >= num_sections,
    "detectable_format:json_format": _json,
    "detectable_format:title": lambda r: any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", r)),
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": lambda r, prompt_to_repeat: r.strip().lower().startswith(
        prompt_to_repeat.strip().lower()),
    "startend:end_checker": lambda r, end_phrase: r.strip().strip('"').lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": lambda r: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
    "change_case:capital_word_frequency": lambda r, capital_frequency, capital_relation: _compare(
        sum(w.isupper() for w in _words(r)), capital_relation, capital_frequency),
    "change_case:english_capital": lambda r: r.isupper() and _english(r),
    "change_case:english_lowercase": lambda r: r.islower() and _english(r),
    "punctuation:no_comma": lambda r: "," not in r,
}


def encode_instructions(row: Dict[str, Any], where: str) -> str:
    """The gold 'answer' of an IFEval row: its instruction ids and their (non-null) kwargs."""
    ids, kwargs = list(row.get("instruction_id_list") or []), list(row.get("kwargs") or [])
    unknown = [i for i in ids if i not in CHECKS]
    if not ids or unknown or len(kwargs) != len(ids):
        raise ConfigError(f"ifeval: {where}: needs instruction_id_list with known ids and one kwargs "
                          f"dict each (unknown: {unknown}); the file must follow the google/IFEval schema")
    clean = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    return json.dumps({"ids": ids, "kwargs": clean})


def followed(response: str, gold: str) -> List[bool]:
    """One bool per instruction of the prompt."""
    spec = json.loads(gold)
    out = []
    for iid, kw in zip(spec["ids"], spec["kwargs"]):
        try:
            out.append(bool(response.strip()) and bool(CHECKS[iid](response, **kw)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"ifeval: instruction {iid} got kwargs {sorted(kw)}: {exc}") from None
    return out


def grade(response: str, gold: str) -> bool:
    """Strict prompt-level: every instruction followed."""
    return all(followed(response, gold))


def instruction_accuracy(responses: List[str], golds: List[str]) -> float:
    """Strict instruction-level accuracy over (response, gold) pairs."""
    flags = [f for r, g in zip(responses, golds) for f in followed(r, g)]
    return sum(flags) / max(len(flags), 1)
