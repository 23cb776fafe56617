"""Every per-method rule in one place: who works in a step, what the loss uses, which servers run.

The training methods (``objective.method``):

=============  =========================  ===============  ======  =========================
method         responses sampled by       teacher scores   reward  learning signal
=============  =========================  ===============  ======  =========================
opd            the student (on-policy)    every token      no      reverse KL to the teacher
opd+reward     the student (on-policy)    every token      yes     reverse KL + reward
rl             the student (on-policy)    no               yes     group-normalised reward
sft            the teacher (or the task's no               no      token NLL of the samples
               reference solutions)
=============  =========================  ===============  ======  =========================

Nothing else in the package compares ``objective.method`` with a string; it asks here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from opd_megatron.config.schema import CHOICES, Config, ObjectiveConfig


@dataclass(frozen=True)
class Method:
    """What one training method does in a step."""

    name: str
    on_policy: bool
    """The student samples the responses it is trained on (else: sft on teacher/reference text)."""
    distills: bool
    """The teacher scores every sampled token and the loss has a KL term to it."""
    uses_reward: bool
    """The environment reward (a grader of the answer) enters the loss."""


METHODS: Dict[str, Method] = {
    "opd": Method("opd", on_policy=True, distills=True, uses_reward=False),
    "opd+reward": Method("opd+reward", on_policy=True, distills=True, uses_reward=True),
    "rl": Method("rl", on_policy=True, distills=False, uses_reward=True),
    "sft": Method("sft", on_policy=False, distills=False, uses_reward=False),
}
assert set(METHODS) == set(CHOICES["objective.method"]), "methods.METHODS and the schema CHOICES disagree"


def method_of(objective: ObjectiveConfig) -> Method:
    """The Method of ``objective.method`` (validated against config CHOICES at load time)."""
    return METHODS[objective.method]


def sampled_token_kl(objective: ObjectiveConfig) -> bool:
    """The reverse KL enters as a per-token advantage (kl_estimator=sampled_token)."""
    return method_of(objective).distills and objective.kl_estimator == "sampled_token"


def full_vocab_kl(objective: ObjectiveConfig) -> bool:
    """The reverse KL is an exact loss term over the teacher's top-k (kl_estimator=full_vocab)."""
    return method_of(objective).distills and objective.kl_estimator == "full_vocab"


def sft_on_teacher_samples(cfg: Config) -> bool:
    return not method_of(cfg.objective).on_policy and cfg.data.sft_targets == "teacher"


def needs_teacher_model(cfg: Config) -> bool:
    """A teacher model is read at all: every method but rl (where it is optional, for eval) and
    sft on the task's reference solutions."""
    m = method_of(cfg.objective)
    if not m.on_policy:
        return cfg.data.sft_targets == "teacher"
    return m.distills or bool(cfg.teacher.path)


def uses_megatron_teacher(cfg: Config) -> bool:
    """The teacher scores inside the learner's process grid (objective.teacher_backend=megatron)."""
    return (cfg.objective.teacher_backend == "megatron" and bool(cfg.teacher.path)
            and method_of(cfg.objective).distills)


def needs_teacher_servers(cfg: Config) -> bool:
    """Teacher SGLang servers run unless the teacher lives in the learner or is not used at all:
    sft samples them, opd scores on them, rl's eval measures the reverse KL on them."""
    if not cfg.teacher.path:
        return False
    if not method_of(cfg.objective).on_policy:
        return cfg.data.sft_targets == "teacher"
    return cfg.objective.teacher_backend != "megatron"


@dataclass(frozen=True)
class StepRoles:
    """Who works in one training step of a method (one rule for the loop, FLOPs and plans)."""

    sampler: Optional[str]
    """FLOPs role that samples the responses: student_sampling (on-policy), teacher_sampling
    (sft on teacher samples), or None (sft on the task's reference solutions)."""
    teacher_scores: bool
    """The teacher scores every response (the distillation methods, given a teacher)."""


def step_roles(cfg: Config) -> StepRoles:
    m = method_of(cfg.objective)
    if not m.on_policy:
        return StepRoles("teacher_sampling" if cfg.data.sft_targets == "teacher" else None, False)
    return StepRoles("student_sampling", m.distills and bool(cfg.teacher.path))


__all__ = ["METHODS", "Method", "StepRoles", "full_vocab_kl", "method_of", "needs_teacher_model",
           "needs_teacher_servers", "sampled_token_kl", "sft_on_teacher_samples", "step_roles",
           "uses_megatron_teacher"]
