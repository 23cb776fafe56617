"""A task: what the student is trained on, how an answer is graded, what it is evaluated on.

One small protocol, made by one factory from ``data.source`` (``make_task``; ``task_of(cfg)``
adds what the run needs from the method), so the run (session, stages, evaluator, loop)
never names a task module::

    task.prompts               PromptSource: training prompts, resumable (cursor, seek, take)
    task.heldout(num)          the first ``num`` held-out prompts (the in-loop evaluation)
    task.reward(text, answer)  1.0 if the response text answers ``answer`` right, else 0.0
    task.num_heldout           held-out prompts there are (0: no in-loop accuracy)
    task.grader                the grader's name (data.grader resolved)

The generated tasks (arithmetic, instruct, midtrain) are evaluated on the arithmetic
problems (instruct and midtrain: on the instruct task, the behaviour mid-training must not
lose) and graded by exact match of the final ``#number``, as before. A dataset task (jsonl,
parquet, disk, hf) holds ``data.num_heldout`` distinct prompts out by a hash of the prompt text
(``dataset.heldout_split``) and grades with the benchmarks' graders: ``math`` (math-verify) by
default, ``choice`` for letters A-D (``data.grader``).

The reward takes the answer (``Prompt.answer``, which every ``Rollout`` carries as
``Rollout.answer``), the only part of a prompt a grader reads.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Protocol

from opd_megatron.config.schema import Config, DataConfig
from opd_megatron.data import arithmetic
from opd_megatron.data.dataset import DATASET_SOURCES, Row, heldout_split, load_rows
from opd_megatron.data.grading import CHOICE_LETTERS, grade_choice, grade_math
from opd_megatron.data.prompts import Prompt, PromptSource, heldout_prompts
from opd_megatron.errors import ConfigError
from opd_megatron.methods import method_of

Grade = Callable[[str, str], bool]
"""(response text, gold answer) -> correct."""

GRADERS: Dict[str, Grade] = {"arithmetic": arithmetic.is_correct, "math": grade_math, "choice": grade_choice}
"""data.grader values (but auto) and their graders."""


class Task(Protocol):
    grader: str
    prompts: PromptSource
    num_heldout: int

    def heldout(self, num: int) -> List[Prompt]:
        """The first ``num`` held-out prompts (fewer if there are fewer; none for num_heldout=0)."""

    def reward(self, response: str, answer: Optional[str]) -> float:
        """1.0 if ``response`` answers ``answer`` right, else 0.0 (0.0 without an answer)."""


def grader_name(data: DataConfig) -> str:
    """data.grader, with auto resolved: arithmetic for the generated tasks, math for datasets."""
    if data.grader != "auto":
        return data.grader
    return "math" if data.source in DATASET_SOURCES else "arithmetic"


class _Graded:
    grader: str

    def reward(self, response: str, answer: Optional[str]) -> float:
        if answer is None:
            return 0.0
        return 1.0 if GRADERS[self.grader](response, answer) else 0.0


class GeneratedTask(_Graded):
    """arithmetic, instruct or midtrain: prompts and held-out problems from the seed."""

    def __init__(self, data: DataConfig, seed: int, cursor: int = 0):
        self.data, self.grader = data, grader_name(data)
        if self.grader == "choice":
            raise ConfigError(f"data.grader: choice grades letters A-D; the {data.source} task's answers "
                              f"are numbers (use auto, arithmetic or math)")
        self.prompts = PromptSource(data, seed, cursor)
        self.num_heldout = data.num_heldout

    def heldout(self, num: int) -> List[Prompt]:
        return heldout_prompts(self.data, num) if self.num_heldout else []


class DatasetTask(_Graded):
    """Rows of a dataset, ``data.num_heldout`` distinct prompts of them held out."""

    def __init__(self, data: DataConfig, seed: int, cursor: int = 0, *, rows: Optional[List[Row]] = None,
                 uses_reward: bool = False, sft_references: bool = False):
        self.data, self.grader = data, grader_name(data)
        self.rows = load_rows(data) if rows is None else rows
        self.heldout_rows, self.train_rows = heldout_split(self.rows, data.num_heldout, str(data.path))
        self.check(uses_reward=uses_reward, sft_references=sft_references)
        self.prompts = PromptSource(data, seed, cursor, records=[r.prompt for r in self.train_rows])
        self.num_heldout = len(self.heldout_rows)

    def heldout(self, num: int) -> List[Prompt]:
        return [r.prompt for r in self.heldout_rows[:num]]

    def check(self, *, uses_reward: bool, sft_references: bool) -> None:
        """Every row the run grades has an answer the grader can read; every row sft trains on
        (data.sft_targets=reference) has a reference. Raises ConfigError naming the row."""
        d = self.data
        graded = [(r, "a held-out row: the in-loop accuracy grades it; or data.num_heldout=0")
                  for r in self.heldout_rows]
        if uses_reward:
            graded += [(r, "the reward grades every training row") for r in self.train_rows]
        for row, why in graded:
            answer = row.prompt.answer
            if answer is None:
                raise ConfigError(f"data.answer_key: '{d.answer_key}' missing in {row.where} ({why}); "
                                  f"the row has fields: {', '.join(row.fields) or '(none)'}")
            bad = _answer_problem(self.grader, answer)
            if bad:
                raise ConfigError(f"data.answer_key: '{d.answer_key}' is '{answer[:40]}' in {row.where}, {bad}")
        if sft_references:
            for row in self.train_rows:
                if row.prompt.reference is None:
                    raise ConfigError(f"data.reference_key: '{d.reference_key}' missing in {row.where} "
                                      f"(sft with data.sft_targets=reference trains on it); the row has "
                                      f"fields: {', '.join(row.fields) or '(none)'}")


def _answer_problem(grader: str, answer: str) -> Optional[str]:
    if grader == "arithmetic":
        try:
            int(answer)
        except ValueError:
            return "not a whole number (data.grader=arithmetic); use data.grader=math"
    if grader == "choice" and answer.strip().upper() not in tuple(CHOICE_LETTERS):
        return f"not a letter {CHOICE_LETTERS[0]}-{CHOICE_LETTERS[-1]} (data.grader=choice)"
    return None


def make_task(data: DataConfig, seed: int, cursor: int = 0, *, uses_reward: bool = False,
              sft_references: bool = False, rows: Optional[List[Row]] = None) -> Task:
    """The task of ``data.source``, its prompt stream at ``cursor``. ``uses_reward``: training
    rows are graded too; ``sft_references``: training rows need references (both: rows are
    checked). ``rows``: a dataset's rows already read (else read from data.path)."""
    if data.source in DATASET_SOURCES:
        return DatasetTask(data, seed, cursor, rows=rows, uses_reward=uses_reward, sft_references=sft_references)
    return GeneratedTask(data, seed, cursor)


def task_of(cfg: Config) -> Task:
    """The run's task: its data and seed, with what its method needs checked."""
    m = method_of(cfg.objective)
    return make_task(cfg.data, cfg.run.seed, uses_reward=m.uses_reward,
                     sft_references=not m.on_policy and cfg.data.sft_targets == "reference")


__all__ = ["GRADERS", "DatasetTask", "GeneratedTask", "Task", "grader_name", "make_task", "task_of"]
