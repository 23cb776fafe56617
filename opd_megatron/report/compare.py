"""The blog-style method table of several runs: FLOPs by side, compute efficiency, FLOPs to
reach 95% of the teacher's accuracy; the first run is the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from opd_megatron.report.inputs import read_config, read_json
from opd_megatron.report.metrics import METRICS_FILE, read_metrics
from opd_megatron.report.outcome import accuracy_curve, final_flops, flops_to_reach, flops_total, outcome
from opd_megatron.report.render import fmt

TARGET_FRACTION = 0.95
"""'FLOPs to reach 95% of the teacher's accuracy' (issue 8)."""


def _run_row(run_dir: Path, teacher_accuracy: Optional[float]) -> Dict[str, Any]:
    records, _ = read_metrics(run_dir / METRICS_FILE)
    summary = read_json(run_dir / "summary.json")
    _, config = read_config(run_dir)
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
