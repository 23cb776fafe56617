"""``opd run``: set up a run, drive the loop, always leave a report.

Order: check the run directory (nothing written on bad input) -> build missing models
(prepare) -> write config.yaml -> start SGLang servers -> build the learner (resume if a
checkpoint exists) -> evaluate before -> ``loop.train`` -> evaluate after, export the
student, summary.json, report.md. Servers are stopped by PID in every case. SIGUSR1/SIGTERM
(Slurm preemption) make the loop checkpoint after the current step and exit 3.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Optional

from opd_megatron.run import rundir
from opd_megatron.config.schema import Config
from opd_megatron.errors import EXIT_PREEMPTED, ConfigError



class Preemption:
    """Set by SIGUSR1/SIGTERM; the loop checkpoints and returns at the next step boundary."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "Preemption":
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        print(f"[opd] signal {signum}: checkpoint after this step, then exit {EXIT_PREEMPTED}", flush=True)
        self.flag = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_prepare_recipe(recipe: str) -> Path:
    from opd_megatron.run.preflight import load_and_validate

    cfg, _ = load_and_validate(recipe)
    code = run(cfg, recipe=recipe, overrides=[])
    if code != 0:
        from opd_megatron.errors import RuntimeFailure

        raise RuntimeFailure(f"prepare recipe {recipe} failed with exit code {code}")
    return rundir.run_dir_of(cfg) / "hf"


def check_start(cfg: Config) -> None:
    """What only the machine that runs it can say, checked before anything is written: the
    process count against ``parallel``, and on rank 0 a writable ``run.output_dir``, the SGLang
    stack for the servers it launches and their ports free."""
    p = cfg.parallel
    world = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1
    if p.tp * p.pp * p.dp != world:
        raise ConfigError(f"parallel: tp*pp*dp = {p.tp}*{p.pp}*{p.dp} needs {p.tp * p.pp * p.dp} learner "
                          f"processes, this run has {world}; launch with torchrun --nproc_per_node="
                          f"{p.tp * p.pp * p.dp} (slurm/opd.sbatch does) or change parallel")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    target = rundir.run_dir_of(cfg).resolve()
    existing = next(a for a in (target, *target.parents) if a.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.output_dir: {existing} is not a writable directory (the run would write "
                          f"{target}); set run.output_dir to one you can write")
    from opd_megatron.config.layout import server_ports
    from opd_megatron.engines.apikey import check_router
    from opd_megatron.engines.launcher import check_cpu_stack, check_gpu_stack, check_port_free, resolve_device
    from opd_megatron.methods import needs_teacher_servers

    e = cfg.engines
    teacher = needs_teacher_servers(cfg) and not e.teacher.urls
    if e.student.urls and not teacher:
        return
    check_router(e, e.host, "the router would listen on")
    check_cpu_stack() if resolve_device(e) == "cpu" else check_gpu_stack()
    ports = server_ports(e, teacher_servers=teacher)
    for port in ([] if e.student.urls else [*ports.student, *([ports.router] if ports.router else [])]) + \
            list(ports.teacher):
        check_port_free(e.host, port)


def run(cfg: Config, recipe: str = "", overrides: Optional[List[str]] = None) -> int:
    """Run a validated config end to end; returns the exit code."""
    from opd_megatron.run.prepare import ensure_model

    check_start(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return _follow(cfg)

    mode = rundir.check_run_dir(cfg)
    for role in ("teacher", "student"):
        model = getattr(cfg, role)
        if model.path:
            ensure_model(model, role, run_prepare_recipe)
    run_dir = rundir.open_run_dir(cfg, mode)
    from opd_megatron.report import write_environment

    write_environment(run_dir)  # git sha, versions, hardware of the machine that runs it
    t0 = time.perf_counter()
    session = None
    error: Optional[str] = None
    code = 1
    try:
        from opd_megatron.run.session import Session

        from opd_megatron.run.console import library_output_to

        with ExitStack() as stack, Preemption() as preempt, library_output_to(run_dir / "logs"):
            session = Session(cfg, run_dir, stack, preempt)
            code = session.execute()
        return code
    except BaseException as e:
        error = f"{e.__class__.__name__}: {e}"
        raise
    finally:
        _finish(cfg, run_dir, session, time.perf_counter() - t0, error, code)


def _follow(cfg: Config) -> int:
    """A learner rank > 0 under torchrun: build the learner, mirror rank 0's calls."""
    from opd_megatron.run.spmd import build_learner_side, follow

    for role in ("student", "teacher"):
        if getattr(cfg, role).path and not Path(getattr(cfg, role).path).exists():
            raise ConfigError(f"{role}.path: {getattr(cfg, role).path} must exist before a multi-process "
                              f"run (run its prepare recipe once in one process first)")
    follow(build_learner_side(cfg))
    return 0


def _finish(cfg: Config, run_dir: Path, session: Any, wall_s: float, error: Optional[str], code: int) -> None:
    """summary.json (partial on failure) and report.md, whatever happened. ``exit_code`` is
    there because torchrun turns every failing exit into 1: a wrapper (the rehearsal, a Slurm
    job) reads 3, preempted, here."""
    summary: Dict[str, Any] = {"wall_s": round(wall_s, 2), "completed": False,
                               "seeds": {"run": cfg.run.seed}, "exit_code": code}
    if session is not None:
        summary.update(session.summary())
    if error:
        summary["error"] = error
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    if summary.get("completed"):
        print(summary_table(cfg, summary), flush=True)
    if cfg.report.enabled:
        try:
            from opd_megatron.report import write_report

            write_report(run_dir, plots=cfg.report.plots)
        except Exception as e:  # the report must never hide the run's own outcome
            print(f"[opd] report failed: {e.__class__.__name__}: {e}", flush=True)


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.4f}"


def summary_table(cfg: Config, s: Dict[str, Any]) -> str:
    """The end-of-run table: accuracy and reverse KL before/after, FLOPs by role, time by stage."""
    rows = [f"== {cfg.run.name}: {s.get('method')} for {s.get('steps')} steps "
            f"({s.get('wall_s', 0):.0f} s wall) ==",
            f"{'teacher accuracy':<28}{_fmt(s.get('teacher_accuracy'), True)}",
            f"{'student accuracy':<28}{_fmt(s.get('student_accuracy_before'), True)} -> "
            f"{_fmt(s.get('student_accuracy_after'), True)}",
            f"{'reverse KL (nats/token)':<28}{_fmt(s.get('reverse_kl_before'))} -> "
            f"{_fmt(s.get('reverse_kl_after'))}"]
    flops = s.get("flops") or {}
    rows.append("FLOPs: " + ", ".join(f"{k} {v:.3g}" for k, v in flops.items() if v))
    stages = s.get("stage_seconds") or {}
    rows.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return "\n".join(rows)


__all__ = ["run", "run_prepare_recipe"]
