"""A generated math task stored like a real dataset: DeepMath-103K's schema, LaTeX answers.

Each row has DeepMath's fields ``question``, ``final_answer`` (LaTeX: ``78``, ``\\frac{3}{4}``),
``difficulty``, ``topic`` and ``r1_solution_1`` (a reference solution in Qwen3's thinking
format, ending in ``\\boxed{}``), so a recipe reads it exactly as it reads DeepMath
(``data.prompt_key=question data.answer_key=final_answer``) and grades it with the benchmarks'
math grader. Two kinds of problems, small enough for the tiny CPU models:

    "Evaluate 8-1*5*6 modulo 100."  ->  "<think>\\n1*5=5;5*6=30;8-30=78\\n</think>\\n\\n\\boxed{78}"
    "Simplify 6/8."                 ->  "<think>\\ngcd(6,8)=2;6/2=3;8/2=4\\n</think>\\n\\n\\boxed{\\frac{3}{4}}"

Rows come from a seed; ``write_dataset`` writes them as jsonl (one object per line) and, with
``datasets`` installed, as a ``save_to_disk`` directory. ``write_benchmark`` writes unseen
problems in AIME'24's schema (``HuggingFaceH4/aime_2024``: ``id``, ``problem``, ``answer``,
``solution``, ``url``, ``year``), for ``eval.benchmark_files: {aime24: PATH}`` in the loop;
``write_choice_benchmark`` the same problems as four-option questions in GPQA-Diamond's schema
(``Idavidrein/gpqa``: ``Record ID``, ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``),
for rehearsing a recipe that evaluates gpqa_diamond.

The shipped copies (``assets/data/math-tiny/``) are ``write_dataset(DIR, DATA_SEED, NUM_ROWS)``
``write_benchmark(DIR / "aime24.jsonl", BENCHMARK_SEED, 30, exclude=rows(DATA_SEED, NUM_ROWS))``
and ``write_choice_benchmark(DIR / "gpqa_diamond.jsonl", BENCHMARK_SEED + 1, 20, exclude=...)``;
a test checks they equal what these functions make.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Dict, List

from opd_megatron.data import arithmetic

FIELDS = ("question", "final_answer", "difficulty", "topic", "r1_solution_1")
FRACTION_SHARE = 0.3
"""Share of fraction problems (the rest are arithmetic traces mod 100)."""
MAX_FRACTION_TERM = 20
DATA_SEED, NUM_ROWS, BENCHMARK_SEED = 2026, 20000, 2024


def _think(steps: str, answer: str) -> str:
    return f"<think>\n{steps}\n</think>\n\n\\boxed{{{answer}}}"


def arithmetic_row(rng: random.Random, min_ops: int = 2, max_ops: int = 4) -> Dict[str, object]:
    p = arithmetic.random_problem(rng, min_ops, max_ops)
    trace = p.solution.rsplit(";#", 1)[0]
    return {"question": f"Evaluate {p.prompt[:-1]} modulo 100.", "final_answer": p.answer,
            "difficulty": float(p.prompt.count("*") + len(p.prompt) // 4), "topic": "arithmetic",
            "r1_solution_1": _think(trace, p.answer)}


def fraction_row(rng: random.Random) -> Dict[str, object]:
    a, b = rng.randint(1, MAX_FRACTION_TERM), rng.randint(2, MAX_FRACTION_TERM)
    g = math.gcd(a, b)
    n, d = a // g, b // g
    answer = str(n) if d == 1 else f"\\frac{{{n}}}{{{d}}}"
    return {"question": f"Simplify {a}/{b}.", "final_answer": answer, "difficulty": 1.0 + (g > 1),
            "topic": "fractions", "r1_solution_1": _think(f"gcd({a},{b})={g};{a}/{g}={n};{b}/{g}={d}", answer)}


def rows(seed: int, num: int) -> List[Dict[str, object]]:
    """``num`` distinct rows (distinct questions), in a fixed order set by ``seed``."""
    rng = random.Random(seed)
    out: List[Dict[str, object]] = []
    seen = set()
    while len(out) < num:
        row = fraction_row(rng) if rng.random() < FRACTION_SHARE else arithmetic_row(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            out.append(row)
    return out


def write_dataset(out_dir: str | Path, seed: int, num: int, *, disk: bool = True) -> Path:
    """``out_dir/train.jsonl`` and (``disk``) ``out_dir/train_disk/`` (datasets.save_to_disk)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = rows(seed, num)
    (out / "train.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in data))
    if disk:
        import datasets

        datasets.Dataset.from_list(data).save_to_disk(str(out / "train_disk"))
    return out


def write_benchmark(path: str | Path, seed: int, num: int, *, exclude: List[Dict[str, object]]) -> Path:
    """``num`` arithmetic problems (integer answers, as AIME's) absent from ``exclude``, as jsonl
    in AIME'24's schema."""
    rng = random.Random(seed)
    banned = {r["question"] for r in exclude}
    out: List[Dict[str, object]] = []
    while len(out) < num:
        row = arithmetic_row(rng)
        if row["question"] not in banned:
            banned.add(row["question"])
            out.append({"id": len(out), "problem": row["question"], "answer": row["final_answer"],
                        "solution": row["r1_solution_1"], "url": "", "year": 2024})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out))
    return path


def write_choice_benchmark(path: str | Path, seed: int, num: int, *, exclude: List[Dict[str, object]]) -> Path:
    """``num`` unseen arithmetic problems as four-option questions in GPQA-Diamond's schema: the
    correct value and three other residues mod 100 (the grader shuffles the options)."""
    rng = random.Random(seed)
    banned = {r["question"] for r in exclude}
    out: List[Dict[str, object]] = []
    while len(out) < num:
        row = arithmetic_row(rng)
        if row["question"] in banned:
            continue
        banned.add(row["question"])
        answer = int(str(row["final_answer"]))
        wrong = rng.sample([v for v in range(100) if v != answer], 3)
        out.append({"Record ID": f"rec{len(out)}", "Question": row["question"], "Correct Answer": str(answer),
                    **{f"Incorrect Answer {i + 1}": str(v) for i, v in enumerate(wrong)}})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out))
    return path
