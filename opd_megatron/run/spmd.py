"""Driving a multi-process learner from one loop.

Under ``torchrun`` every learner method is collective (all ranks call it with the same
arguments), while only rank 0 talks to the SGLang servers. Rank 0 wraps its learner in
``Collective``: each call is first broadcast as (method, args) to the other ranks, which
sit in ``follow`` and make the same call. One process (world size 1) uses the learner directly.
"""

from __future__ import annotations

from typing import Any, Dict

from opd_megatron.config.schema import Config
from opd_megatron.methods import uses_megatron_teacher

STOP = "__stop__"


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Collective:
    """Rank 0's view of a collective object (the learner, a frozen teacher): every method call
    is mirrored on all ranks, where ``follow`` holds the same object under the same key."""

    def __init__(self, target: Any, key: str = "learner"):
        self._target, self._key = target, key

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._target, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            _broadcast((self._key, name, args, kwargs))
            return fn(*args, **kwargs)

        return call


def stop_followers() -> None:
    import torch.distributed as dist

    _broadcast((STOP, STOP, (), {}))
    dist.barrier()  # rank 0 must not exit (closing its sockets) before every follower has read STOP


def follow(targets: dict) -> None:
    """Ranks > 0: make every call rank 0 makes on ``targets[key]``, until it says stop."""
    import torch.distributed as dist

    while True:
        key, name, args, kwargs = _broadcast(None)
        if key == STOP:
            dist.barrier()
            return
        getattr(targets[key], name)(*args, **kwargs)


def build_learner_side(cfg: Config) -> Dict[str, Any]:
    """What every learner rank builds, in the same order on all of them (the constructors are
    collective): ``learner`` (the student), and ``teacher`` when it scores inside Megatron."""
    from transformers import AutoTokenizer

    from opd_megatron.learner import FrozenTeacher, Learner

    # The tokenizer's length: output rows past it (a padded embedding) are no token.
    num_tokens = len(AutoTokenizer.from_pretrained(cfg.student.tokenizer or cfg.student.path))
    built: Dict[str, Any] = {"learner": Learner(cfg.student, cfg.objective, cfg.optim, cfg.parallel,
                                                num_steps=cfg.run.num_steps, seed=cfg.run.seed,
                                                sampling_temperature=cfg.rollout.temperature,
                                                lora=cfg.lora, num_tokens=num_tokens)}
    if uses_megatron_teacher(cfg):
        built["teacher"] = FrozenTeacher(cfg.teacher, cfg.parallel, seed=cfg.run.seed,
                                         num_tokens=num_tokens)
    return built
