"""IFEval: every one of the 25 instruction checkers accepts a compliant response and rejects a
non-compliant one; rows in the google/IFEval schema (HF's all-keys kwargs with nulls) load
through the datasets path; bad rows give a one-line error; strict prompt / instruction-level
accuracy through ``evaluate`` with a canned-response generate_fn (a stand-in for the model)."""

from __future__ import annotations

import json

import pytest

from opd_megatron.errors import ConfigError
from opd_megatron.evaluation import ifeval
from opd_megatron.evaluation.benchmarks import load_benchmark

EN = "This is a plain English sentence about the weather and the sea. "

# (instruction id, kwargs, compliant response, non-compliant response)
CASES = [
    ("keywords:existence", {"keywords": ["ocean", "salt"]}, "The ocean tastes of salt.", "The ocean is wide."),
    ("keywords:frequency", {"keyword": "blue", "frequency": 3, "relation": "at least"},
     "blue, Blue and BLUE", "blue and blue"),
    ("keywords:frequency", {"keyword": "red", "frequency": 2, "relation": "less than"}, "one red", "red red"),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A category of dogs.", "A Cat sat."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zig zag", "zag"),
    ("language:response_language", {"language": "de"},
     "Das ist ein kurzer deutscher Satz über das Wetter und das Meer.", EN),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "One. Two.", "One. Two! Three?"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "First part.\n***\nSecond.\n***\nThird."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "one two three four five", "one two three"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First we wait.\n\nThen, we go.", "First we wait.\n\nAfter that we go."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].",
     "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. bye", "Hello. bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S more", "Hi.\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a\n* b\n- c"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:title", {}, "<<My Poem>>\nroses", "My Poem\nroses"),
    ("combination:two_responses", {}, "first answer\n******\nsecond answer", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    ("startend:end_checker", {"end_phrase": "Any questions?"}, "That is all. Any questions?", "Any questions? No."),
    ("startend:quotation", {}, '"quoted"', 'not "quoted"'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THE BIG dog", "The BIG dog"),
    ("change_case:english_capital", {}, EN.upper(), EN),
    ("change_case:english_lowercase", {}, EN.lower(), EN),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, one."),
]


def _gold(iid, kwargs):
    return ifeval.encode_instructions({"instruction_id_list": [iid], "kwargs": [kwargs]}, "case")


def test_every_instruction_type_has_a_case():
    assert {c[0] for c in CASES} == set(ifeval.CHECKS) and len(ifeval.CHECKS) == 25


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_accepts_compliant_and_rejects_the_rest(iid, kwargs, good, bad):
    gold = _gold(iid, kwargs)
    assert ifeval.grade(good, gold) and not ifeval.grade(bad, gold)
    assert not ifeval.grade("   ", gold)  # an empty response follows nothing


ROWS = [
    {"key": 1, "prompt": "Write about the sea without commas, all lowercase.",
     "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
     "kwargs": [{"num_words": None, "relation": None}, {"num_words": None, "relation": None}]},
    {"key": 2, "prompt": "Answer in at least 5 words.", "instruction_id_list": ["length_constraints:number_words"],
     "kwargs": [{"num_words": 5, "relation": "at least"}]},
]


def test_rows_in_the_hf_schema_load_and_grade_strictly(tmp_path):
    from opd_megatron.evaluation.suite import SamplingParams, evaluate

    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    bench = load_benchmark("ifeval", data_files=str(path))
    assert [p.id for p in bench.problems] == ["1", "2"] and bench.problems[0].prompt == ROWS[0]["prompt"]
    canned = {ROWS[0]["prompt"]: EN.lower(),  # lowercase English, but with no comma: both followed
              ROWS[1]["prompt"]: "Too short, sorry."}  # 3 words: not followed

    def generate(prompts, n, sampling):  # a stand-in for the model: fixed responses
        return [[canned[p]] * n for p in prompts]

    result = evaluate(bench, generate, SamplingParams(num_samples=1, temperature=0.0, max_new_tokens=8))
    assert result.avg_at_k == pytest.approx(0.5) and result.num_correct == [1, 0]
    responses = [canned[p.prompt] for p in bench.problems]
    assert ifeval.instruction_accuracy(responses, [p.answer for p in bench.problems]) == pytest.approx(2 / 3)


def test_bad_rows_and_kwargs_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]}) + "\n")
    with pytest.raises(ConfigError, match="made:up"):
        load_benchmark("ifeval", data_files=str(path))
    with pytest.raises(ConfigError, match="keywords:existence"):
        ifeval.grade("text", _gold("keywords:existence", {"wrong_key": 1}))
