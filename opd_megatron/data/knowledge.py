"""The continual-learning task on the tiny char vocabulary: new facts to learn, instructions to
keep following.

**Facts** (new knowledge no model can have): seeded random pairs "key -> value", keys 3-digit,
values 0-99, written as ``;417=52``. A *document* strings a few facts together
(``;417=52 ;903=18 ;266=7``); recall is asked as the prompt ``;417=`` and graded by the number
the answer starts with.

**Instructions** (the assistant behaviour mid-training erodes), IF-eval style: every arithmetic
prompt carries an instruction whose compliance a function checks, whatever the answer is:

========== ======== ======================================================================
kind       prefix   the response must be
========== ======== ======================================================================
steps      (none)   the step trace then the answer: ``1*5=5;5*6=30;8-30=78;#78``
answer     ``#``    the answer alone: ``#78``
========== ======== ======================================================================
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from opd_megatron.data import arithmetic

KINDS: Dict[str, str] = {"steps": "", "answer": "#"}
"""Instruction kind -> prompt prefix."""

_FORMAT = {"steps": re.compile(r"^(\d+[+\-*]\d+=\d+;)+#\d+$"), "answer": re.compile(r"^#\d+$")}
_LEADING_NUMBER = re.compile(r"^\s*(\d+)")


@dataclass(frozen=True)
class Instruction:
    kind: str
    prompt: str
    """Prefix + arithmetic prompt, e.g. '#8-1*5*6='."""
    reference: str
    """A compliant, correct response."""
    answer: str


def instruct(problem: arithmetic.Problem, kind: str) -> Instruction:
    reference = problem.solution if kind == "steps" else f"#{problem.answer}"
    return Instruction(kind, KINDS[kind] + problem.prompt, reference, problem.answer)


def kind_of(prompt: str) -> str:
    return next((k for k, p in KINDS.items() if p and prompt.startswith(p)), "steps")


def complies(kind: str, response: str) -> bool:
    """The verifiable format constraint of ``kind`` (correctness is not checked)."""
    return bool(_FORMAT[kind].match(response.strip()))


def heldout_instructions(num_heldout: int, min_ops: int, max_ops: int) -> List[Instruction]:
    """The arithmetic held-out split, kinds alternating."""
    kinds = list(KINDS)
    probs = arithmetic.heldout_problems(num_heldout, min_ops, max_ops)
    return [instruct(p, kinds[i % len(kinds)]) for i, p in enumerate(probs)]


def facts(seed: int, num: int) -> List[Tuple[str, str]]:
    """``num`` distinct (key, value) facts of one fact set (one per continual round)."""
    rng = random.Random(f"facts:{seed}")
    keys = rng.sample(range(100, 1000), num)
    return [(str(k), str(rng.randrange(100))) for k in keys]


def recall_prompt(key: str) -> str:
    return f";{key}="


def recalled(response: str, value: str) -> bool:
    m = _LEADING_NUMBER.match(response)
    return bool(m) and m.group(1) == value


def document(chunk: List[Tuple[str, str]]) -> Tuple[str, str]:
    """(prompt, continuation) of one document: the first key is the prompt, the rest of the
    text is trained on, so every value and every later key is a next-token target."""
    text = " ".join(f"{recall_prompt(k)}{v}" for k, v in chunk)
    head = recall_prompt(chunk[0][0])
    return head, text[len(head):]
