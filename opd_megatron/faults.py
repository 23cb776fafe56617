"""Fault injection for the reliability tests: every ``OPD_FAULT_*`` knob, read once.

Unset (the normal case) every hook here is a no-op. The tests set them in a subprocess's
environment:

==============================  ===========================================================
``OPD_FAULT_POISON=...``        ``teacher_nan@3,teacher_inf@4,loss_nan@5,grad_inf@6``: the
                                N-th training scoring call returns NaN / inf teacher logprobs;
                                the N-th learner step's loss is NaN (its backward runs) / one
                                gradient element is inf after the backward
``OPD_FAULT_KILL_SERVER=...``   ``student@3,teacher@5``: SIGKILL that role's first launched
                                server 0.1 s into the named training step's call to it
``OPD_FAULT_KILL_IN_PUSH=N``    SIGKILL this process inside the push of weight version N,
                                after its first tensors are loaded, before the push ends
``OPD_FAULT_KILL_IN_CHECKPOINT=N``  SIGKILL this process while writing the step-N
                                checkpoint (its rank file written, nothing committed)
``OPD_FAULT_KILL_AFTER_LOG=N``  SIGKILL this process right after step N's metrics.jsonl line
                                is written, before that step's checkpoint
==============================  ===========================================================
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, Mapping, Optional


@dataclass
class Faults:
    poison: Dict[str, int] = field(default_factory=dict)
    kill_server_at: Dict[str, int] = field(default_factory=dict)
    kill_in_push: Optional[int] = None
    kill_in_checkpoint: Optional[int] = None
    kill_after_log: Optional[int] = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Faults":
        def step(name: str) -> Optional[int]:
            raw = env.get(name, "")
            return int(raw) if raw.strip() else None

        kill = env.get("OPD_FAULT_KILL_SERVER", "")
        poison = env.get("OPD_FAULT_POISON", "")
        return cls(poison={kind: int(at) for kind, at in (item.split("@") for item in poison.split(",") if "@" in item)},
                   kill_server_at={role: int(at) for role, at in
                                   (item.split("@") for item in kill.split(",") if "@" in item)},
                   kill_in_push=step("OPD_FAULT_KILL_IN_PUSH"),
                   kill_in_checkpoint=step("OPD_FAULT_KILL_IN_CHECKPOINT"),
                   kill_after_log=step("OPD_FAULT_KILL_AFTER_LOG"))


FAULTS = Faults.from_env(os.environ)
"""This process's knobs, read when the package is first imported."""


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def in_push(version: int) -> None:
    """Hook inside a weight push (engines/weight_sync/base.py)."""
    if FAULTS.kill_in_push == version:
        _kill_self()


def in_checkpoint(step: int) -> None:
    """Hook inside a checkpoint write (learner/checkpoint.py)."""
    if FAULTS.kill_in_checkpoint == step:
        _kill_self()


def after_log(step: int) -> None:
    """Hook after a step's metrics line, before its checkpoint (opd_megatron/run/loop.py)."""
    if FAULTS.kill_after_log == step:
        _kill_self()


def poisoned(kind: str, call: int) -> bool:
    """Call number ``call`` (1-based) of the kind's stage is to be poisoned with ``kind``."""
    return FAULTS.poison.get(kind) == call


@contextmanager
def server_kill(role: Optional[str], step: int, pid: Optional[int]) -> Iterator[None]:
    """SIGKILL the process group ``pid`` 0.1 s into the block when ``role``'s kill is due at
    ``step`` (once per role), so the request in flight fails."""
    if role is None or pid is None or FAULTS.kill_server_at.get(role) != step:
        yield
        return
    del FAULTS.kill_server_at[role]
    timer = threading.Timer(0.1, lambda: os.killpg(pid, signal.SIGKILL))
    timer.start()
    try:
        yield
    finally:
        timer.join()
