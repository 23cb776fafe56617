"""Benchmarks: AIME'24, AIME'25, MATH500, GPQA-Diamond (HF datasets) and the tiny task.

Public dataset ids, loaded with ``datasets.load_dataset`` at run time (clusters have
internet; offline, pass ``data_files=`` a local JSON/JSONL/Parquet file in the same schema
and it goes through the same conversion):

=============  ==============================================  =====  ===================
benchmark      dataset (config)                                split  fields used
=============  ==============================================  =====  ===================
aime24         HuggingFaceH4/aime_2024                         train  problem, answer
aime25         math-ai/aime25                                  test   problem, answer
math500        HuggingFaceH4/MATH-500                          test   problem, answer
gpqa_diamond   Idavidrein/gpqa (gpqa_diamond; gated: HF token) train  Question, Correct
                                                                      Answer, Incorrect
                                                                      Answer 1..3
ifeval         google/IFEval                                   train  key, prompt,
                                                                      instruction_id_list,
                                                                      kwargs
=============  ==============================================  =====  ===================

IFEval is graded by opd_megatron.evaluation.ifeval (strict prompt-level accuracy).

GPQA's four options are shuffled per question with a seed (the dataset stores the correct
answer first), so the gold letter is uniform over A-D and fixed for a given seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from opd_megatron.errors import ConfigError
from opd_megatron.data.grading import CHOICE_LETTERS, grade_choice, grade_math

MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
GPQA_PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be "
    "of the form 'Answer: LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
    "step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
GPQA_FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
               "Incorrect Answer 3")


@dataclass(frozen=True)
class EvalProblem:
    id: str
    """Stable id (dataset id field or row index)."""
    prompt: str
    """User-message text; the generate_fn applies any chat template."""
    answer: str
    """Gold answer: LaTeX/number for math, a letter A-D for choice, digits for the tiny task."""


@dataclass
class Benchmark:
    name: str
    problems: List[EvalProblem]
    grade: Callable[[str, str], bool]
    """(response text, gold answer) -> correct."""
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HFSource:
    dataset: str
    config: Optional[str]
    split: str
    kind: str  # "math" | "choice" | "ifeval"


HF_SOURCES = {
    "aime24": HFSource("HuggingFaceH4/aime_2024", None, "train", "math"),
    "aime25": HFSource("math-ai/aime25", None, "test", "math"),
    "math500": HFSource("HuggingFaceH4/MATH-500", None, "test", "math"),
    "gpqa_diamond": HFSource("Idavidrein/gpqa", "gpqa_diamond", "train", "choice"),
    "ifeval": HFSource("google/IFEval", None, "train", "ifeval"),
}
BENCHMARKS = tuple(HF_SOURCES) + ("arithmetic",)


def check_eval_benchmarks(benchmarks: Sequence[str], benchmark_files: Dict[str, str]) -> None:
    """eval.benchmarks are benchmarks; eval.benchmark_files name listed ones and exist."""
    from pathlib import Path

    for name in benchmarks:
        if name not in BENCHMARKS:
            raise ConfigError(f"eval.benchmarks: '{name}' is not a benchmark; choose from: {', '.join(BENCHMARKS)}")
    for name, path in benchmark_files.items():
        key = f"eval.benchmark_files.{name}"
        if name not in BENCHMARKS or name == "arithmetic":
            files = [b for b in BENCHMARKS if b != "arithmetic"]
            raise ConfigError(f"{key}: '{name}' is not a benchmark read from a file; choose from: {', '.join(files)}")
        if name not in benchmarks:
            raise ConfigError(f"{key}: '{name}' is not in eval.benchmarks ({list(benchmarks)}); add it "
                              f"there or drop the file")
        if not Path(str(path)).is_file():
            raise ConfigError(f"{key}: benchmark file not found: {path!r}")


def _math_problems(rows: Sequence[dict], name: str) -> List[EvalProblem]:
    out = []
    for i, row in enumerate(rows):
        if "problem" not in row or "answer" not in row:
            raise ConfigError(f"{name}: row {i} lacks 'problem'/'answer' (has {sorted(row)}); "
                              f"the file must follow the {HF_SOURCES[name].dataset} schema")
        pid = str(row.get("id", row.get("unique_id", i)))
        out.append(EvalProblem(pid, MATH_PROMPT.format(problem=row["problem"]), str(row["answer"]).strip()))
    return out


def _gpqa_problems(rows: Sequence[dict], seed: int, prompt: str) -> List[EvalProblem]:
    out = []
    for i, row in enumerate(rows):
        missing = [f for f in GPQA_FIELDS if f not in row]
        if missing:
            raise ConfigError(f"gpqa_diamond: row {i} lacks {missing}; the file must follow the "
                              "Idavidrein/gpqa schema")
        options = [str(row[f]).strip() for f in GPQA_FIELDS[1:]]
        digest = hashlib.sha256(f"{seed}:{row['Question']}".encode()).hexdigest()
        order = list(range(4))
        random.Random(int(digest[:16], 16)).shuffle(order)
        shuffled = {CHOICE_LETTERS[j]: options[k] for j, k in enumerate(order)}
        gold = CHOICE_LETTERS[order.index(0)]
        pid = str(row.get("Record ID", i))
        out.append(EvalProblem(pid, prompt.format(question=str(row["Question"]).strip(), **shuffled), gold))
    return out


def _load_rows(name: str, data_files: Optional[str]) -> List[dict]:
    import datasets

    src = HF_SOURCES[name]
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # the run's log and one-line errors stay ours
    try:
        if data_files:
            fmt = "parquet" if str(data_files).endswith(".parquet") else "json"
            ds = datasets.load_dataset(fmt, data_files=str(data_files), split="train")
        else:
            ds = datasets.load_dataset(src.dataset, src.config, split=src.split)
    except FileNotFoundError as err:
        raise ConfigError(f"{name}: data file not found ({err}); pass an existing --data-file "
                          f"(eval.benchmark_files.{name} in a run)") from None
    except Exception as err:  # offline, gated, renamed: say how to fix it in one line
        where = data_files or f"{src.dataset} ({src.config or 'default'}, split {src.split})"
        raise ConfigError(f"{name}: cannot load {where}: {type(err).__name__}: {str(err)[:200]}; "
                          f"offline, pass --data-file (eval.benchmark_files.{name} in a run) with a local "
                          "copy in the same schema") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    return [dict(r) for r in ds]


def load_benchmark(name: str, *, data_files: Optional[str] = None, limit: Optional[int] = None,
                   seed: int = 0, min_ops: int = 2, max_ops: int = 4,
                   choice_prompt: Optional[str] = None) -> Benchmark:
    """Build a Benchmark by name; ``limit`` keeps the first N problems; ``choice_prompt`` (an eval
    protocol's) replaces GPQA_PROMPT, with the same fields."""
    if name not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown benchmark {name!r}: {hint}use one of {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if name == "arithmetic":
        return arithmetic_benchmark(limit or 500, min_ops=min_ops, max_ops=max_ops)
    rows = _load_rows(name, data_files)
    if limit is not None:
        rows = rows[:limit]
    if HF_SOURCES[name].kind == "choice":
        return Benchmark(name, _gpqa_problems(rows, seed, choice_prompt or GPQA_PROMPT), grade_choice, {"seed": seed})
    if HF_SOURCES[name].kind == "ifeval":
        from opd_megatron.evaluation import ifeval

        problems = [EvalProblem(str(row.get("key", i)), str(row.get("prompt", "")),
                                ifeval.encode_instructions(row, f"row {i}")) for i, row in enumerate(rows)]
        return Benchmark(name, problems, ifeval.grade)
    return Benchmark(name, _math_problems(rows, name), grade_math)


def arithmetic_benchmark(num_problems: int = 500, *, min_ops: int = 2, max_ops: int = 4) -> Benchmark:
    """The tiny task's fixed held-out split, graded by exact match on the final '#answer'."""
    from opd_megatron.data.arithmetic import heldout_problems, is_correct

    problems = [EvalProblem(str(i), p.prompt, p.answer)
                for i, p in enumerate(heldout_problems(num_problems, min_ops, max_ops))]
    return Benchmark("arithmetic", problems, is_correct)
