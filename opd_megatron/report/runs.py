"""The reproducibility report of a run, and the blog-style comparison of several runs.

    opd report RUN_DIR                      writes RUN_DIR/report.md (+ PNG plots next to it)
    opd report --compare RUN_A RUN_B ...    prints the method table (first run = baseline)
    python -m opd_megatron.report.runs RUN_DIR

``write_report`` is called at the end of every run, also a failed one, so everything it reads
may be missing or partial: a truncated last line of metrics.jsonl, no summary.json, no evals.
It reads only files, so a report can be rebuilt later on any machine.

Files read from RUN_DIR (all optional):

* ``config.yaml``: the resolved config (section ``run.seed``, ``objective.method``, ...).
* ``metrics.jsonl``: one JSON object per line, keys in ``METRIC_KEYS``.
* ``summary.json``: end-of-run facts, keys in ``SUMMARY_KEYS``.
* ``environment.json``: ``collect_environment()`` captured at run start (git, versions,
  hardware, Slurm); without it they are collected when the report is written, and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from opd_megatron.errors import ConfigError
from opd_megatron.plan.flops import ROLES
from opd_megatron.report.render import (accuracy_curve, flops_to_reach, flops_total, render_report,
                                        write_plots)

METRIC_KEYS: Dict[str, str] = {
    "step": "int, required. Optimizer steps completed; 0 = the record before training.",
    "final": "bool. True on the end-of-run evaluation record.",
    "loss": "float. Training loss of the step.",
    "grad_norm": "float. Global gradient norm before clipping.",
    "lr": "float. Learning rate of the step.",
    "num_tokens": "int. Response tokens trained on in the step.",
    "tokens_per_s": "float. Trained tokens per wall second of the step.",
    "reward_mean": "float. Mean environment reward of the step's rollouts.",
    "reverse_kl_sampled": "float. Mean sampled-token log p_student - log p_teacher over the "
                          "step's training batch (nats/token).",
    "reverse_kl": "float, eval records only. Held-out per-token reverse KL of the student to "
                  "the teacher on student T=1 samples (nats/token).",
    "accuracy": "float in [0, 1], eval records only. Held-out student accuracy (avg@k).",
    "teacher_accuracy": "float in [0, 1], step-0 record. The teacher's held-out accuracy.",
    "flops": "dict, cumulative since the start: FlopsCounter.as_dict(), i.e. one key per role "
             f"({', '.join(ROLES)}) plus teacher, student, total.",
    "flops_total": "float, optional. Cumulative total FLOPs (else flops['total']).",
    "stage_seconds": "dict stage -> wall seconds spent in it during this step (rollout, "
                     "teacher_score, train, weight_sync, eval, checkpoint, ...).",
    "num_skipped": "int. Steps skipped so far for non-finite values.",
    "<benchmark>_avg_at_k": "float, eval records only, optional. avg@k on eval.benchmarks "
                            "(and <benchmark>_pass_at_<k>), from evaluation.evaluate_benchmarks.",
}
SUMMARY_KEYS: Dict[str, str] = {
    "completed": "bool. The run reached run.num_steps and wrote its final checkpoint.",
    "method": "str. objective.method (opd | sft | rl | opd+reward).",
    "steps": "int. Last completed step.",
    "teacher_accuracy": "float. Teacher held-out accuracy (target of 'FLOPs to 95%').",
    "student_accuracy_before": "float.", "student_accuracy_after": "float.",
    "reverse_kl_before": "float.", "reverse_kl_after": "float.",
    "flops": "dict. Final FlopsCounter.as_dict().",
    "stage_seconds": "dict stage -> total wall seconds.",
    "num_skipped_steps": "int.", "wall_s": "float. Run wall seconds.",
    "error": "str, optional. Why a failed run stopped.",
    "seeds": "dict, optional. Seeds beyond run.seed (e.g. data, sampling, eval).",
}
PACKAGES = ("torch", "megatron-core", "sglang", "transformers", "omegaconf", "datasets",
            "math-verify")
VERSIONS_FILE = Path("/opt/opd/versions.json")
TARGET_FRACTION = 0.95
"""'FLOPs to reach 95% of the teacher's accuracy' (issue 8)."""


# ----- reading a run directory ------------------------------------------------------------
def read_metrics(path: Path) -> Tuple[List[dict], int]:
    """Records of metrics.jsonl and the number of unreadable lines (a killed run may leave
    a truncated last line)."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(run_dir: Path) -> Tuple[str, dict]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return "", {}
    text = path.read_text(errors="replace")
    try:
        import yaml

        data = yaml.safe_load(text)
    except Exception:  # a report of a broken run must still be written
        data = None
    return text, data if isinstance(data, dict) else {}


# ----- environment ------------------------------------------------------------------------
def _git(args: List[str], cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _hardware() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    ram_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpus: List[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch or a broken driver: report no GPUs rather than fail
        pass
    return {"cpu": cpu, "num_cpu_cores": os.cpu_count(), "ram_gib": ram_gib, "gpus": gpus,
            "hostname": platform.node(), "python": platform.python_version()}


def collect_environment() -> Dict[str, Any]:
    """Git sha + dirty flag, package versions, hardware, Slurm job: call at run start and
    save with ``write_environment`` so the report states where the run ran."""
    repo = Path(__file__).resolve().parents[1]
    sha = _git(["rev-parse", "HEAD"], repo)
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST",
                                        "SLURM_NNODES", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
             if k in os.environ}
    versions_file = _read_json(VERSIONS_FILE) if VERSIONS_FILE.is_file() else None
    return {"git_sha": sha, "git_dirty": bool(status) if status is not None else None,
            "versions": _versions(), "image_versions": versions_file, "hardware": _hardware(),
            "slurm": slurm, "argv": sys.argv}


def write_environment(run_dir: Path) -> Dict[str, Any]:
    env = collect_environment()
    (Path(run_dir) / "environment.json").write_text(json.dumps(env, indent=2, sort_keys=True))
    return env


def write_report(run_dir, plots: bool = True) -> Path:
    """Write RUN_DIR/report.md (and PNG plots) from whatever the run left; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist; pass a runs/<name> directory")
    if not any((run_dir / f).is_file() for f in ("config.yaml", "metrics.jsonl", "summary.json")):
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml, metrics.jsonl or "
                          "summary.json); pass a runs/<name> directory")
    config_text, config = _read_config(run_dir)
    records, num_bad = read_metrics(run_dir / "metrics.jsonl")
    summary = _read_json(run_dir / "summary.json")
    env = _read_json(run_dir / "environment.json")
    env_note = "captured at run start (environment.json)"
    if env is None:
        env, env_note = collect_environment(), "collected when this report was written (no environment.json)"
    images = write_plots(run_dir, records) if plots else {}
    text = render_report(run_dir, config_text, config, records, num_bad, summary, env, env_note, images)
    out = run_dir / "report.md"
    out.write_text(text)
    return out


def _run_row(run_dir: Path, teacher_accuracy: Optional[float]) -> Dict[str, Any]:
    from opd_megatron.report.render import final_flops, outcome

    records, _ = read_metrics(run_dir / "metrics.jsonl")
    summary = _read_json(run_dir / "summary.json")
    _, config = _read_config(run_dir)
    o = outcome(records, summary)
    flops = final_flops(records, summary)
    teacher_acc = teacher_accuracy if teacher_accuracy is not None else o.get("teacher_accuracy")
    curve = accuracy_curve(records)
    target = TARGET_FRACTION * teacher_acc if teacher_acc is not None else None
    best = max(curve, key=lambda c: (c[1], -c[0])) if curve else None
    return {"run": run_dir.name,
            "method": o.get("method") or (config.get("objective") or {}).get("method") or "-",
            "accuracy": o.get("student_accuracy_after"), "best": best, "teacher_accuracy": teacher_acc,
            "teacher_flops": float(flops.get("teacher", 0.0) or 0.0),
            "student_flops": float(flops.get("student", 0.0) or 0.0),
            "total_flops": flops_total({"flops": flops}) if flops else None,
            "target": target, "flops_to_target": flops_to_reach(curve, target) if target is not None else None,
            "curve": curve}


def compare_table(run_dirs: Sequence[Path], teacher_accuracy: Optional[float] = None) -> str:
    """The blog-style method table; ratios are relative to the first run (the baseline).

    compute efficiency (total) = baseline total FLOPs / this run's total FLOPs;
    FLOPs to target = cumulative FLOPs (all roles) when held-out accuracy first reaches 95% of
    the teacher's (interpolated between evals), else 'not reached' with the best accuracy and
    the FLOPs where it was reached; compute efficiency (target) = baseline's / this run's;
    the same at the common level (the highest accuracy every run reached).
    """
    from opd_megatron.report.render import fmt

    rows = [_run_row(Path(d), teacher_accuracy) for d in run_dirs]
    base = rows[0]
    # The highest accuracy every run reached: a level at which all runs can be compared even
    # when none reaches the 95% target (the toy runs often do not).
    bests = [r["best"][1] for r in rows if r["best"] is not None]
    common = min(bests) if len(bests) == len(rows) else None
    for r in rows:
        r["flops_to_common"] = flops_to_reach(r["curve"], common) if common is not None else None

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    header = ["run", "method", "accuracy", "teacher FLOPs", "student FLOPs", "total FLOPs",
              "CE vs first (total)", "FLOPs to 95% teacher", "CE vs first (to 95%)",
              f"FLOPs to common {fmt(common, pct=True)}", "CE vs first (common)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r["flops_to_target"] is not None:
            reach = fmt(r["flops_to_target"])
        elif r["best"] is not None:
            reach = f"not reached (best {fmt(r['best'][1], pct=True)} at {fmt(r['best'][0])})"
        else:
            reach = "no evals"
        cells = [r["run"], r["method"], fmt(r["accuracy"], pct=True), fmt(r["teacher_flops"]),
                 fmt(r["student_flops"]), fmt(r["total_flops"]), ratio(base["total_flops"], r["total_flops"]),
                 reach, ratio(base["flops_to_target"], r["flops_to_target"]),
                 fmt(r["flops_to_common"]), ratio(base["flops_to_common"], r["flops_to_common"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    teacher = base["teacher_accuracy"]
    lines += ["", f"Teacher accuracy {fmt(teacher, pct=True)}; target = 95% of it "
              f"({fmt(base['target'], pct=True)}). Teacher FLOPs = teacher sampling (SFT data) + "
              "teacher scoring; student FLOPs = student sampling + training + recompute. Common = "
              "the highest accuracy every run reached. CE = first run's FLOPs / this run's."]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opd report", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", help="run directories (runs/<name>)")
    p.add_argument("--compare", action="store_true", help="print the method table of the runs")
    p.add_argument("--teacher-accuracy", type=float, help="override the teacher accuracy (0-1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--output", help="with --compare: also write the table (Markdown) here")
    return p


def cli_main(argv: Sequence[str]) -> int:
    """`opd report RUN_DIR` or `opd report --compare RUN_DIR ...`."""
    args = _parser().parse_args(list(argv))
    for d in args.run_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"run directory {d} does not exist; pass runs/<name> directories")
    if args.compare:
        table = compare_table([Path(d) for d in args.run_dirs], args.teacher_accuracy)
        print(table)
        if args.output:
            Path(args.output).write_text(table + "\n")
        return 0
    if len(args.run_dirs) != 1:
        raise ConfigError("opd report: one RUN_DIR, or --compare with several")
    print(write_report(args.run_dirs[0], plots=not args.no_plots))
    return 0


if __name__ == "__main__":
    from opd_megatron.errors import cli_entry

    raise SystemExit(cli_entry(cli_main))
