"""The embedded reasoning task: multi-step arithmetic where order of operations matters.

Expressions of ``min_ops..max_ops`` operators from ``+ - *`` on operands 0-9. Every
intermediate result is taken mod 100; multiplications are done first (left to right), then
additions and subtractions left to right. The step-by-step solution is a trace of the
operations in the order they are done, ending with ``#answer``::

    prompt   "8-1*5*6="
    solution "1*5=5;5*6=30;8-30=78;#78"

Prompts are generated from a seed, so the held-out split (``heldout_problems``) is fixed
and never overlaps the training stream (``train_problems`` skips every held-out prompt).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional

MOD = 100
OPS = "+-*"
HELDOUT_SEED = 20251027
_ANSWER_RE = re.compile(r"#(\d+)")


@dataclass(frozen=True)
class Problem:
    prompt: str
    """The expression followed by '=', e.g. '8-1*5*6='."""
    solution: str
    """Step-by-step trace ending with '#answer'."""
    answer: str
    """The final answer as text (0-99)."""


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return (a + b) % MOD
    if op == "-":
        return (a - b) % MOD
    return (a * b) % MOD


def solve(expression: str) -> Problem:
    """Solve ``'8-1*5*6'`` (without '=') into a Problem with its trace."""
    nums = [int(c) for c in expression[0::2]]
    ops = list(expression[1::2])
    steps: List[str] = []
    # Multiplications first, left to right.
    i = 0
    while i < len(ops):
        if ops[i] == "*":
            r = _apply(nums[i], "*", nums[i + 1])
            steps.append(f"{nums[i]}*{nums[i + 1]}={r}")
            nums[i : i + 2] = [r]
            ops.pop(i)
        else:
            i += 1
    # Then + and - left to right.
    while ops:
        r = _apply(nums[0], ops[0], nums[1])
        steps.append(f"{nums[0]}{ops[0]}{nums[1]}={r}")
        nums[0:2] = [r]
        ops.pop(0)
    answer = str(nums[0])
    return Problem(prompt=expression + "=", solution=";".join(steps + [f"#{answer}"]), answer=answer)


def random_problem(rng: random.Random, min_ops: int, max_ops: int) -> Problem:
    n_ops = rng.randint(min_ops, max_ops)
    parts = [str(rng.randint(0, 9))]
    for _ in range(n_ops):
        parts.append(rng.choice(OPS))
        parts.append(str(rng.randint(0, 9)))
    return solve("".join(parts))


def heldout_problems(num: int, min_ops: int = 2, max_ops: int = 4) -> List[Problem]:
    """The fixed held-out split: distinct prompts from a seed independent of the run seed."""
    rng = random.Random(HELDOUT_SEED)
    seen, out = set(), []
    while len(out) < num:
        p = random_problem(rng, min_ops, max_ops)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def train_problems(seed: int, heldout: List[Problem], min_ops: int = 2, max_ops: int = 4,
                   start: int = 0) -> Iterator[Problem]:
    """An endless stream of training problems that never yields a held-out prompt.

    ``start`` skips that many problems, so a resumed run continues the same stream (the
    data cursor of a checkpoint is this count).
    """
    rng = random.Random(seed)
    banned = {p.prompt for p in heldout}
    produced = 0
    while True:
        p = random_problem(rng, min_ops, max_ops)
        if p.prompt in banned:
            continue
        if produced >= start:
            yield p
        produced += 1


def extract_answer(text: str) -> Optional[str]:
    """The first '#digits' in a response, or None."""
    m = _ANSWER_RE.search(text)
    return m.group(1) if m else None


def is_correct(response: str, answer: str) -> bool:
    """Exact match of the extracted final answer."""
    got = extract_answer(response)
    return got is not None and int(got) == int(answer)
