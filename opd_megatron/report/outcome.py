"""What a run reached, derived from its metrics.jsonl records and summary.json: cumulative
FLOPs, the accuracy-vs-FLOPs curve, FLOPs to reach a target, final metrics, stage times.

Pure functions; a partial run (records only, no summary) yields what it has.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

ROLE_ORDER = ("student_sampling", "teacher_sampling", "teacher_scoring", "learner_train",
              "learner_recompute")


def flops_total(rec: dict) -> Optional[float]:
    """Cumulative total FLOPs of a record: flops_total, flops['total'], or the role sum."""
    if isinstance(rec.get("flops_total"), (int, float)):
        return float(rec["flops_total"])
    flops = rec.get("flops")
    if not isinstance(flops, dict):
        return None
    if isinstance(flops.get("total"), (int, float)):
        return float(flops["total"])
    return float(sum(v for k, v in flops.items() if k in ROLE_ORDER and isinstance(v, (int, float))))


def accuracy_curve(records: List[dict]) -> List[Tuple[float, float]]:
    """(cumulative FLOPs, accuracy) of every eval record; the step-0 eval sits at 0 FLOPs."""
    out = []
    for rec in records:
        acc = rec.get("accuracy")
        if not isinstance(acc, (int, float)):
            continue
        total = flops_total(rec)
        if total is None:
            total = 0.0 if rec["step"] == 0 else None
        if total is not None:
            out.append((total, float(acc)))
    return sorted(out)


def flops_to_reach(curve: List[Tuple[float, float]], target: float) -> Optional[float]:
    """FLOPs at which accuracy first reaches ``target``, interpolated linearly between the
    last eval below and the first at/above it (evals are coarse); None if never reached."""
    prev = None
    for flops, acc in curve:
        if acc >= target:
            if prev is None or prev[1] >= acc:
                return flops
            f0, a0 = prev
            return f0 + (target - a0) / (acc - a0) * (flops - f0)
        prev = (flops, acc)
    return None


def final_flops(records: List[dict], summary: Optional[dict]) -> Dict[str, float]:
    """The run's cumulative FLOPs by role: summary.json, else the last record that has them."""
    if summary and isinstance(summary.get("flops"), dict) and summary["flops"]:
        return summary["flops"]
    for rec in reversed(records):
        if isinstance(rec.get("flops"), dict):
            return rec["flops"]
    return {}


def stage_totals(records: List[dict], summary: Optional[dict]) -> Dict[str, float]:
    """Total wall seconds per stage: summary.json, else the sum over the records."""
    if summary and isinstance(summary.get("stage_seconds"), dict) and summary["stage_seconds"]:
        return summary["stage_seconds"]
    totals: Dict[str, float] = {}
    for rec in records:
        for k, v in (rec.get("stage_seconds") or {}).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return totals


def outcome(records: List[dict], summary: Optional[dict]) -> Dict[str, Any]:
    """Final metrics from summary.json, or reconstructed from the records of a partial run."""
    evals = [r for r in records if isinstance(r.get("accuracy"), (int, float))]
    kls = [r for r in records if isinstance(r.get("reverse_kl"), (int, float))]
    teacher = next((r["teacher_accuracy"] for r in records if "teacher_accuracy" in r), None)
    derived = {
        "steps": max((int(r["step"]) for r in records), default=None),
        "teacher_accuracy": teacher,
        "student_accuracy_before": evals[0]["accuracy"] if evals else None,
        "student_accuracy_after": evals[-1]["accuracy"] if evals else None,
        "best_accuracy": max((r["accuracy"] for r in evals), default=None),
        "reverse_kl_before": kls[0]["reverse_kl"] if kls else None,
        "reverse_kl_after": kls[-1]["reverse_kl"] if kls else None,
    }
    if summary:
        derived.update({k: v for k, v in summary.items() if k in derived and v is not None})
        for k in ("method", "wall_s", "num_skipped_steps", "completed", "error"):
            derived[k] = summary.get(k)
    return derived
