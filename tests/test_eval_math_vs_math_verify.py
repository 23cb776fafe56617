"""The math grader (opd_megatron/data/grading.py) against math-verify itself, on responses written
here to probe the edges: each case fixes our verdict, and each case where math-verify (its
defaults on the text after the thinking) decides otherwise carries the reason ours is right. A
disagreement not listed, or a listed one that went away, fails the test."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from opd_megatron.data.grading import final_text, grade_math

# Reasons, one per kind of disagreement.
LAST_BOX = "a response that corrects itself means its last box; math-verify grades every box as a set"
FBOX = r"\fbox is a box too; math-verify extracts nothing from it"
THIN_SPACE = r"1\,000 is one thousand with a thin-space separator; math-verify reads it as 1*0"
SPACE_GROUPS = "1 000 000 is one number with space separators; math-verify reads the groups apart"
DEGREE = r"\degree is the degree sign; math-verify does not know the macro"
DEGREE_SIGN = "a unicode degree sign in a box is a degree sign; math-verify loses the boxed answer"

Case = Tuple[str, str, bool, Optional[str]]  # response, gold, our verdict, why math-verify differs

# (gold, a correct answer in another form, a wrong answer)
ANSWERS = [
    ("204", "204", "205"), (r"\frac{14}{3}", r"\dfrac{14}{3}", r"\frac{3}{14}"), (r"\frac{1}{2}", "0.5", "0.25"),
    ("-7", "-7", "7"), (r"2\sqrt{3}", r"\sqrt{12}", r"3\sqrt{2}"), (r"\pi", r"\pi", r"2\pi"),
    ("(3, 4)", "(3,4)", "(4, 3)"), ("0", "0", "1"), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", r"\sqrt{2}"),
    ("x^2 + 1", "1 + x^2", "x^2 - 1"), ("12", "12.0", "13"), (r"\left[ 1, 3 \right]", "[1, 3]", "[1, 4]"),
    ("3", "3", "-3"), (r"\frac{7}{8}", "0.875", r"\frac{8}{7}"),
]

CASES: List[Case] = []
for gold, right, wrong in ANSWERS:
    CASES += [
        (rf"So the answer is \boxed{{{right}}}.", gold, True, None),
        (rf"Thus $\boxed{{{right}}}$", gold, True, None),
        (rf"<think>maybe {wrong}?</think> The answer is $\boxed{{{right}}}$", gold, True, None),
        (rf"<think>the answer is \boxed{{{right}}}", gold, False, None),  # thinking never closed
        (rf"\boxed{{{wrong}}}", gold, False, None),
        (rf"<think>\boxed{{{right}}}</think> Final: \boxed{{{wrong}}}", gold, False, None),
        (rf"First \boxed{{{wrong}}}. No, that is wrong; it is \boxed{{{right}}}.", gold, True, LAST_BOX),
        (rf"\fbox{{{right}}}", gold, True, FBOX),
        (rf"The answer is ${right}$.", gold, True, None),
        (rf"The answer is ${wrong}$.", gold, False, None),
    ]

# Digit-group separators (gold, the number with a separator).
for gold, written in [("1000", r"1\,000"), ("12345", r"12\,345"), ("1000000", r"1\,000\,000"), ("2024", r"2\,024"),
                      ("1000", r"1\;000"), ("98765", r"98\:765"), ("10000", r"10\,000")]:
    CASES += [(rf"\boxed{{{written}}}", gold, True, THIN_SPACE),
              (rf"$\boxed{{{written}}}$ is the count", gold, True, THIN_SPACE)]
CASES += [
    (r"\boxed{1 000}", "1000", True, SPACE_GROUPS), (r"\boxed{12 345}", "12345", True, SPACE_GROUPS),
    (r"\boxed{1 000 000}", "1000000", True, SPACE_GROUPS), (r"\boxed{1\,000}", "1", False, None),
    (r"\boxed{4\!500}", "4500", True, None),  # a negative thin space: math-verify ignores it too
    (r"\boxed{1,000}", "1000", True, None), (r"\boxed{1000}", "1000", True, None),
    (r"\boxed{10\,00}", "1000", False, None),  # not a group of three: not a separator
    (r"\boxed{2\,3}", "23", False, None),
]
# Degrees.
for angle in ("45", "90", "120", "30"):
    CASES += [(rf"\boxed{{{angle}^\circ}}", angle, True, None), (rf"\boxed{{{angle}^{{\circ}}}}", angle, True, None),
              (f"\\boxed{{{angle}\u00b0}}", angle, True, DEGREE_SIGN), (rf"\boxed{{{angle}\degree}}", angle, True, DEGREE)]
# Odd ones.
CASES += [
    ("I don't know.", "204", False, None), ("", "204", False, None), (r"\boxed{}", "204", False, None),
    (r"The answer is \boxed{\boxed{204}}", "204", True, None), (r"\boxed{\text{204}}", "204", True, None),
    (r"<think></think>\boxed{204}", "204", True, None), (r"\boxed{ 204 }", "204", True, None),
    (r"\boxed{204", "204", False, None), (r"Answer: 204", "204", True, None),
    (r"\boxed{\{1, 2\}}", r"\{1,2\}", True, None), (r"\boxed{50\%}", "50", True, None),
    (r"\boxed{\frac{1}{3}}", "0.333", False, None),
]


def _math_verify(response: str, gold: str) -> bool:
    """The reference: math-verify's parse and verify with their defaults, on the final text."""
    from math_verify import parse, verify

    text = final_text(response)
    if text is None or not text.strip():
        return False
    gold_parsed = parse(f"${gold}$") or parse(gold)
    pred = parse(text)
    return bool(gold_parsed and pred and verify(gold_parsed, pred))


def test_the_corpus_is_large_and_each_case_distinct():
    assert len(CASES) >= 150 and len({(r, g) for r, g, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("response,gold,ours,why", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_grader_verdict_and_each_disagreement_with_math_verify(response, gold, ours, why):
    assert grade_math(response, gold) is ours, (response, gold)
    reference = _math_verify(response, gold)
    if why is None:
        assert reference is ours, f"math-verify says {reference}, ours {ours}, and no reason is listed: {response!r}"
    else:
        assert reference is not ours, f"listed as a disagreement ({why}) but math-verify agrees: {response!r}"
