"""What a run carries across a kill: the checkpoint (learner + step, prompt cursor, FLOPs, eval
before training, stage totals, skipped steps), the resume from it, and the run's summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

from opd_megatron.config.schema import Config
from opd_megatron.errors import RuntimeFailure
from opd_megatron.run import rundir
from opd_megatron.types import Rollout


class RunState:
    def __init__(self, cfg: Config, run_dir: Path, learner: Any, prompts: Any, flops: Any):
        self.cfg, self.run_dir, self.learner, self.prompts, self.flops = cfg, run_dir, learner, prompts, flops
        self.before: Dict[str, Any] = {}
        self.after: Dict[str, Any] = {}
        self.step = 0
        self.saved_step: Optional[int] = None
        """The step of the checkpoint this process last wrote or resumed from."""
        self.completed = False

    def checkpoint(self, c: Any, step: int) -> None:
        """Save the learner and the loop's state after ``step`` (``c``: the loop's Components)."""
        extra = {"step": step, "cursor": self.prompts.cursor, "flops": self.flops.state_dict(),
                 "before": self.before, "stage_total_s": dict(c.timer.total_s), "num_skipped": c.num_skipped,
                 # rollout.max_staleness=k: the batches of the next k steps, sampled by weights this
                 # checkpoint no longer holds; resumed as they are, so the resumed run trains on what
                 # this one would
                 "pending": {str(s): [dataclasses.asdict(r) for r in rs] for s, rs in c.pending.items()}}
        target = rundir.checkpoint_path(self.run_dir, step)
        try:
            self.learner.save_checkpoint(target, extra)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            raise checkpoint_write_error(target, exc, rundir.latest_checkpoint(self.run_dir)) from exc
        self.saved_step = step
        rundir.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep)

    def resume(self, c: Any) -> int:
        """Load the latest checkpoint if there is one (checkpoint.resume); returns its step (0: none)."""
        ckpt = rundir.latest_checkpoint(self.run_dir) if self.cfg.checkpoint.resume else None
        if ckpt is None:
            return 0
        extra = self.learner.load_checkpoint(ckpt)
        self.step = self.saved_step = int(extra["step"])
        self.prompts.seek(int(extra["cursor"]))
        self.flops.load_state_dict(extra["flops"])
        self.before = dict(extra.get("before") or {})
        c.timer.total_s.update(extra.get("stage_total_s") or {})
        c.num_skipped = int(extra.get("num_skipped", 0))
        c.pending = {int(s): [Rollout(**r) for r in rs] for s, rs in (extra.get("pending") or {}).items()}
        print(f"[opd] resumed from {ckpt} (step {self.step})", flush=True)
        return self.step

    def summary(self, c: Optional[Any], num_restarts: int) -> Dict[str, Any]:
        return {
            "completed": self.completed, "method": self.cfg.objective.method, "steps": self.step,
            "teacher_accuracy": self.before.get("teacher_accuracy"),
            "student_accuracy_before": self.before.get("accuracy"),
            "student_accuracy_after": self.after.get("accuracy"),
            "reverse_kl_before": self.before.get("reverse_kl"),
            "reverse_kl_after": self.after.get("reverse_kl"),
            "flops": self.flops.as_dict(),
            "stage_seconds": {k: round(v, 2) for k, v in c.timer.total_s.items()} if c else {},
            "num_skipped_steps": c.num_skipped if c else 0,
            "num_server_restarts": num_restarts,
        }


def checkpoint_write_error(target: Path, exc: BaseException, previous: Optional[Path]) -> RuntimeFailure:
    """One line: what was not written, why (a full disk is named as such), what is kept."""
    import shutil

    free = shutil.disk_usage(target.parent).free
    needed = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file()) if previous else 0
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
    if getattr(exc, "errno", None) == 28 or free < needed:
        cause = f"the disk is full: {free / 2**20:.1f} MiB free, a checkpoint takes {needed / 2**20:.1f} MiB"
    kept = (f"the previous checkpoint {previous.name} is intact and a rerun resumes from it"
            if previous else "no earlier checkpoint exists")
    return RuntimeFailure(f"checkpoint {target} not written ({cause}); nothing partial was left, {kept}; "
                          "free disk space or lower checkpoint.keep, then rerun the same command")
