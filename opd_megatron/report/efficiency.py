"""The compute-efficiency table of ``opd compare``, in the TML blog's shape: pure functions over
run records (metrics.jsonl lines), no I/O.

- The SFT ladder: held-out accuracy of an SFT-from-scratch run at doubling data sizes, and the
  least-squares fit ``accuracy = a + b * log2(samples)`` over the stretch past the knee.
- Each arm's run from the ladder's checkpoint: the FLOPs (teacher, student) and steps at which
  accuracy first reaches the target, interpolated between the two evals around the crossing.
- Compute efficiency of an arm vs continued SFT, as the blog counts it: SFT's FLOPs from scratch
  to the target (the ladder up to the start, then the continued SFT; the blog's SFT-2M row) over
  the arm's own FLOPs from the start, counting SFT's student FLOPs only (blog: 9x) or with the
  teacher sampling of its data (blog: 30x); beside it, the increment alone (continued SFT's
  FLOPs from the start over the arm's). Seeds are paired by index; cells are mean +- sample sd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from opd_megatron.plan.flops import STUDENT_ROLES, TEACHER_ROLES


def _roles(flops: Optional[dict]) -> Tuple[float, float]:
    """(teacher, student) cumulative FLOPs of a record's ``flops``."""
    flops = flops or {}
    return (float(sum(flops.get(k, 0.0) or 0.0 for k in TEACHER_ROLES)),
            float(sum(flops.get(k, 0.0) or 0.0 for k in STUDENT_ROLES)))


def eval_points(records: Sequence[dict]) -> List[Dict[str, float]]:
    """Every eval of a run in step order: step, accuracy, teacher and student FLOPs so far (the
    step-0 eval at 0 FLOPs); a step evaluated twice (the final record) counts once."""
    out: Dict[int, Dict[str, float]] = {}
    for rec in records:
        if not isinstance(rec.get("accuracy"), (int, float)):
            continue
        step = int(rec["step"])
        teacher, student = _roles(rec.get("flops")) if step else (0.0, 0.0)
        if step and not rec.get("flops"):
            continue
        out.setdefault(step, {"step": step, "accuracy": float(rec["accuracy"]),
                              "teacher_flops": teacher, "student_flops": student})
    return [out[s] for s in sorted(out)]


def doubling_points(points: Sequence[Dict[str, float]], first_step: int) -> List[Dict[str, float]]:
    """The evals at steps first_step * 2^k (the ladder's data sizes)."""
    return [p for p in points if p["step"] >= first_step and p["step"] % first_step == 0
            and (p["step"] // first_step) & (p["step"] // first_step - 1) == 0]


@dataclass(frozen=True)
class LogFit:
    """accuracy = intercept + slope * log2(samples), least squares."""

    intercept: float
    slope: float
    r2: float
    num_points: int

    def accuracy_at(self, samples: float) -> float:
        return self.intercept + self.slope * math.log2(samples)

    def samples_for(self, accuracy: float) -> Optional[float]:
        """Samples the fit needs for ``accuracy``; None when the fit does not rise."""
        if self.slope <= 0:
            return None
        return 2.0 ** ((accuracy - self.intercept) / self.slope)


def fit_log_linear(samples: Sequence[float], accuracy: Sequence[float]) -> LogFit:
    if len(samples) < 2:
        raise ValueError("the log-linear fit needs at least two ladder points")
    xs = [math.log2(s) for s in samples]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(accuracy) / len(accuracy)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, accuracy)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in accuracy)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, accuracy))
    return LogFit(intercept, slope, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, n)


def reach(points: Sequence[Dict[str, float]], target: float) -> Optional[Dict[str, float]]:
    """Steps and FLOPs at which accuracy first reaches ``target``: linear between the eval below
    it and the first at or above it (evals are coarse); None if it never does."""
    prev = None
    for p in points:
        if p["accuracy"] >= target:
            if prev is None or prev["accuracy"] >= p["accuracy"]:
                return dict(p, accuracy=p["accuracy"])
            t = (target - prev["accuracy"]) / (p["accuracy"] - prev["accuracy"])
            return {k: prev[k] + t * (p[k] - prev[k]) for k in ("step", "teacher_flops", "student_flops")} | {
                "accuracy": target}
        prev = p
    return None


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def fmt_ms(values: Sequence[float], fmt: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    if not values:
        return "-"
    m, sd = mean_sd([v * scale for v in values])
    return f"{m:{fmt}}{suffix} ± {sd:{fmt}}{suffix}" if len(values) > 1 else f"{m:{fmt}}{suffix}"


@dataclass
class ArmResult:
    """One arm's runs, one per seed, in seed order."""

    name: str
    method: str
    lr: float
    seeds: List[int]
    reached: List[Optional[Dict[str, float]]]   # per seed: reach() at the target, or None
    best: List[float]                          # per seed: best held-out accuracy
    wall_s: List[float]                        # per seed: the run's wall seconds
    steps: List[int]                           # per seed: steps run
    spent: List[Dict[str, float]]              # per seed: FLOPs (teacher, student) of the whole run
    reverse_kl: List[float]                    # per seed: held-out reverse KL at the last eval
    grad_norm: List[float]                     # per seed: mean gradient norm over the steps


def arm_result(name: str, method: str, lr: float, runs: Sequence[Tuple[int, Sequence[dict], Optional[dict]]],
               target: float) -> ArmResult:
    """``runs``: (seed, records, summary) of each seed's run."""
    res = ArmResult(name, method, lr, [], [], [], [], [], [], [], [])
    for seed, records, summary in runs:
        points = eval_points(records)
        res.spent.append(points[-1] if points else {"teacher_flops": 0.0, "student_flops": 0.0})
        kls = [r["reverse_kl"] for r in records if isinstance(r.get("reverse_kl"), (int, float))]
        norms = [r["grad_norm"] for r in records if isinstance(r.get("grad_norm"), (int, float))]
        res.reverse_kl.append(kls[-1] if kls else float("nan"))
        res.grad_norm.append(sum(norms) / len(norms) if norms else float("nan"))
        res.seeds.append(seed)
        res.reached.append(reach(points, target))
        res.best.append(max((p["accuracy"] for p in points), default=float("nan")))
        res.wall_s.append(float((summary or {}).get("wall_s") or 0.0))
        res.steps.append(max((p["step"] for p in points), default=0))
    return res


def efficiency_rows(arms: Sequence[ArmResult], sft_arm: str, ladder_start: Dict[str, float]
                    ) -> List[Dict[str, Any]]:
    """Per arm: the cells of the table (lists over the seeds that reached the target)."""
    sft = next(a for a in arms if a.name == sft_arm)
    rows = []
    for arm in arms:
        ce: Dict[str, List[float]] = {"student": [], "with_teacher": [], "inc_student": [], "inc_with_teacher": []}
        lower = False  # SFT missed the target in a seed the arm reached it: its whole run is a lower bound
        for i, r in enumerate(arm.reached):
            s = sft.reached[i] if i < len(sft.reached) else None
            if r is None or (s is None and arm is sft):
                continue
            if s is None:
                s, lower = sft.spent[i], True
            own = r["teacher_flops"] + r["student_flops"]
            scratch_s = ladder_start["student_flops"] + s["student_flops"]
            scratch_t = ladder_start["teacher_flops"] + s["teacher_flops"]
            ce["student"].append(scratch_s / own)
            ce["with_teacher"].append((scratch_s + scratch_t) / own)
            ce["inc_student"].append(s["student_flops"] / own)
            ce["inc_with_teacher"].append((s["student_flops"] + s["teacher_flops"]) / own)
        hit = [r for r in arm.reached if r is not None]
        rows.append({"arm": arm.name, "method": arm.method, "lr": arm.lr, "seeds": len(arm.seeds),
                     "reached": len(hit), "steps": [r["step"] for r in hit],
                     "teacher_flops": [r["teacher_flops"] for r in hit],
                     "student_flops": [r["student_flops"] for r in hit],
                     "best": arm.best, "wall_s": arm.wall_s, "steps_run": arm.steps, "ce": ce, "ce_lower_bound": lower,
                     "reverse_kl": arm.reverse_kl, "grad_norm": arm.grad_norm})
    return rows


def markdown_table(rows: Sequence[Dict[str, Any]], target: float, start: Dict[str, float],
                   start_samples: float, fit: Optional[LogFit], samples_per_step: float,
                   flops_per_sample: Tuple[float, float], sft_arm: str) -> str:
    """The blog-shaped table: the start and SFT from scratch to the target (the blog's SFT-400K
    and SFT-2M rows: FLOPs from scratch), the fit's extrapolation, then every arm from the start."""
    head = ["method", "accuracy", "seeds at target", "steps from start", "teacher FLOPs", "student FLOPs",
            "CE vs SFT (student FLOPs)", "CE vs SFT (+ teacher sampling)", "CE, increments (student)",
            "CE, increments (+ teacher)", "wall s (this machine)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(*cells: str) -> None:
        lines.append("| " + " | ".join(cells) + " |")

    dash = ["-"] * 4
    row(f"start: SFT from scratch, {start_samples:,.0f} samples (SFT-400K's place)", f"{start['accuracy']:.1%}", "-",
        "-", f"{start['teacher_flops']:.3g}", f"{start['student_flops']:.3g}", *dash, "-")
    sft = next(r for r in rows if r["arm"] == sft_arm)
    if sft["reached"]:
        row(f"SFT from scratch to the target, measured (SFT-2M's place; FLOPs from scratch)", f"{target:.1%}",
            f"{sft['reached']}/{sft['seeds']}", "-", fmt_ms([start["teacher_flops"] + t for t in sft["teacher_flops"]]),
            fmt_ms([start["student_flops"] + s for s in sft["student_flops"]]), "1x", "1x", "-", "-", "-")
    need = fit.samples_for(target) if fit is not None else None
    if need is not None and need > start_samples:
        extra = need - start_samples
        row(f"SFT from scratch to the target, the ladder's fit extrapolated ({need:,.0f} samples)", f"{target:.1%} (fit)",
            "-", f"{extra / samples_per_step:,.0f}", f"{start['teacher_flops'] + extra * flops_per_sample[0]:.3g}",
            f"{start['student_flops'] + extra * flops_per_sample[1]:.3g}", *dash, "-")
    for r in rows:
        ce = r["ce"]
        reached = r["reached"]
        acc = (f"{target:.1%}" if reached == r["seeds"] else f"best {fmt_ms(r['best'], '.1%')}" if not reached else
               f"{target:.1%} ({reached}/{r['seeds']}); best {fmt_ms(r['best'], '.1%')}")
        miss = None if reached else "not reached"
        bound = "> " if r["ce_lower_bound"] else ""  # SFT never got there: its whole run in the numerator
        ratios = ["-", "-", "1x", "1x"] if r["arm"] == sft_arm and reached else [
            bound + fmt_ms(ce[k], ".2g", suffix="x") if ce[k] else "-"
            for k in ("student", "with_teacher", "inc_student", "inc_with_teacher")]
        row(f"{r['arm']} ({r['method']}, lr {r['lr']:g}), from the start", acc, f"{reached}/{r['seeds']}",
            miss or fmt_ms(r["steps"], ".0f"), miss or fmt_ms(r["teacher_flops"]), miss or fmt_ms(r["student_flops"]),
            *ratios, fmt_ms(r["wall_s"], ".0f"))
    return "\n".join(lines)


def scale_rows(table: dict, peak_tflops: float, mfu: float, sampling_mfu: float) -> List[Dict[str, Any]]:
    """GPU-hours of the published (TML) rows through the FLOPs account: each role's FLOPs at its
    MFU (sampling roles at ``sampling_mfu``) on GPUs of ``peak_tflops``."""
    out = []
    for name, row in table["rows"].items():
        roles = row["roles"]
        hours = {k: v / ((sampling_mfu if k.endswith("_sampling") else mfu) * peak_tflops * 1e12) / 3600.0
                 for k, v in roles.items()}
        out.append({"row": name, "aime24": row["aime24"], "teacher_flops": row["teacher_flops"],
                    "student_flops": row["student_flops"], "gpu_hours": sum(hours.values()),
                    "student_gpu_hours": sum(v for k, v in hours.items() if k in STUDENT_ROLES)})
    return out


def diagnostics_table(rows: Sequence[Dict[str, Any]], start_kl: Optional[float]) -> str:
    """Per arm: steps run, best accuracy, held-out reverse KL at the end, mean gradient norm."""
    lines = ["| arm | steps run | best accuracy | reverse KL at the end (start "
             + (f"{start_kl:.3f}" if start_kl is not None else "-") + ") | mean grad norm |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {fmt_ms(r['steps_run'], '.0f')} | {fmt_ms(r['best'], '.1%')} | "
                     f"{fmt_ms(r['reverse_kl'], '.3f')} | {fmt_ms(r['grad_norm'], '.2f')} |")
    return "\n".join(lines)
