"""Rendering of the run report: Markdown sections and PNG plots (matplotlib, Agg backend).

Pure functions over what opd_megatron.report.runs read from a run directory (records of
metrics.jsonl, summary.json, the environment), so a partial run renders what it has and
states what is missing instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path
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


def fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if pct:
        return f"{100 * x:.1f}%"
    if isinstance(x, int):
        return str(x)
    return f"{x:.3e}" if abs(x) >= 1e5 else f"{x:.4g}"


def _table(header: List[str], rows: List[List[Any]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def final_flops(records: List[dict], summary: Optional[dict]) -> Dict[str, float]:
    """The run's cumulative FLOPs by role: summary.json, else the last record that has them."""
    if summary and isinstance(summary.get("flops"), dict) and summary["flops"]:
        return summary["flops"]
    for rec in reversed(records):
        if isinstance(rec.get("flops"), dict):
            return rec["flops"]
    return {}


def stage_totals(records: List[dict], summary: Optional[dict]) -> Dict[str, float]:
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


def status_line(summary: Optional[dict]) -> str:
    if summary is None:
        return "**incomplete**: no summary.json (killed, or still running); figures below come from metrics.jsonl"
    if summary.get("completed"):
        return "**completed**"
    err = summary.get("error")
    return "**failed / stopped early**" + (f": {err}" if err else "")


def write_plots(run_dir: Path, records: List[dict]) -> Dict[str, str]:
    """PNG plots next to report.md; returns title -> file name for those with data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: Dict[str, str] = {}
    curve = accuracy_curve(records)
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([c[0] for c in curve], [100 * c[1] for c in curve], marker="o")
        ax.set_xlabel("cumulative FLOPs (all roles)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title("accuracy vs FLOPs")
        ax.grid(alpha=0.3)
        images["accuracy vs FLOPs"] = _save(fig, run_dir / "accuracy_vs_flops.png")
    series = {key: [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
              for key in ("reverse_kl", "reverse_kl_sampled")}
    if any(series.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = {"reverse_kl": "held-out (eval)", "reverse_kl_sampled": "training batch (sampled token)"}
        for key, pts in series.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if key == "reverse_kl_sampled" else "o",
                        label=labels[key])
        ax.set_xlabel("step")
        ax.set_ylabel("reverse KL (nats/token)")
        ax.set_title("reverse KL vs step")
        ax.legend()
        ax.grid(alpha=0.3)
        images["reverse KL vs step"] = _save(fig, run_dir / "reverse_kl_vs_step.png")
    steps = [r for r in records if isinstance(r.get("stage_seconds"), dict) and r["stage_seconds"]]
    if steps:
        stages = sorted({k for r in steps for k in r["stage_seconds"]})
        fig, ax = plt.subplots(figsize=(7, 4))
        bottom = [0.0] * len(steps)
        xs = [r["step"] for r in steps]
        for stage in stages:
            vals = [float(r["stage_seconds"].get(stage, 0.0)) for r in steps]
            ax.bar(xs, vals, bottom=bottom, label=stage, width=0.9)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("step")
        ax.set_ylabel("wall seconds")
        ax.set_title("time per step by stage")
        ax.legend(fontsize=8)
        images["stage-time breakdown"] = _save(fig, run_dir / "stage_seconds.png")
    return images


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _flops_section(flops: Dict[str, float]) -> List[str]:
    if not flops:
        return ["No FLOPs recorded."]
    total = flops.get("total") or sum(v for k, v in flops.items() if k in ROLE_ORDER) or 0.0
    rows = [[role, fmt(float(flops[role])), fmt(flops[role] / total, pct=True) if total else "-"]
            for role in ROLE_ORDER if role in flops]
    for key in ("teacher", "student", "total"):
        if key in flops:
            rows.append([f"**{key}**", fmt(float(flops[key])), fmt(flops[key] / total, pct=True) if total else "-"])
    return _table(["role", "FLOPs", "share"], rows)


def _env_section(env: Dict[str, Any], env_note: str, config: dict, summary: Optional[dict]) -> List[str]:
    hw = env.get("hardware") or {}
    sha = env.get("git_sha") or "unknown (not a git checkout, or no commit yet)"
    dirty = env.get("git_dirty")
    seeds = {"run.seed": (config.get("run") or {}).get("seed")}
    seeds.update((summary or {}).get("seeds") or {})
    slurm = env.get("slurm") or {}
    lines = [f"Environment {env_note}.", "",
             f"- git: `{sha}`" + ("" if dirty is None else f" ({'dirty' if dirty else 'clean'})"),
             "- seeds: " + ", ".join(f"{k}={v}" for k, v in seeds.items()),
             "- Slurm: " + (", ".join(f"{k}={v}" for k, v in slurm.items()) or "not under Slurm"),
             f"- hardware: {hw.get('cpu')}, {hw.get('num_cpu_cores')} cores, {hw.get('ram_gib')} GiB RAM, "
             f"GPUs: {', '.join(hw.get('gpus') or []) or 'none'}; host {hw.get('hostname')}, "
             f"Python {hw.get('python')}",
             "- packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in (env.get("versions") or {}).items())]
    if env.get("image_versions"):
        lines.append("- image (/opt/opd/versions.json): " + json.dumps(env["image_versions"], sort_keys=True))
    return lines


def render_report(run_dir: Path, config_text: str, config: dict, records: List[dict], num_bad: int,
                  summary: Optional[dict], env: Dict[str, Any], env_note: str,
                  images: Dict[str, str]) -> str:
    """The whole report.md text."""
    o = outcome(records, summary)
    name = (config.get("run") or {}).get("name") or run_dir.name
    method = o.get("method") or (config.get("objective") or {}).get("method")
    lines = [f"# Run report: {name}", "", f"Status: {status_line(summary)}", "",
             f"Method: {method or '-'}; steps: {fmt(o.get('steps'))}; wall: {fmt(o.get('wall_s'))} s; "
             f"metric records: {len(records)}" + (f" ({num_bad} unreadable lines skipped)" if num_bad else ""),
             "", "## Final metrics", ""]
    lines += _table(["metric", "value"], [
        ["teacher accuracy", fmt(o.get("teacher_accuracy"), pct=True)],
        ["student accuracy before -> after", f"{fmt(o.get('student_accuracy_before'), pct=True)} -> "
                                             f"{fmt(o.get('student_accuracy_after'), pct=True)}"],
        ["best student accuracy", fmt(o.get("best_accuracy"), pct=True)],
        ["reverse KL before -> after (nats/token)", f"{fmt(o.get('reverse_kl_before'))} -> "
                                                    f"{fmt(o.get('reverse_kl_after'))}"],
        ["skipped steps", fmt(o.get("num_skipped_steps"))]])
    lines += ["", "## FLOPs by role", "", "Per token: 2N forward (+ attention), 6N training "
              "(opd_megatron.plan.flops), counted from the tokens processed.", ""]
    lines += _flops_section(final_flops(records, summary))
    stages = stage_totals(records, summary)
    lines += ["", "## Time by stage", ""]
    lines += _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in stages.items()]) if stages else ["No stage times recorded."]
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({fname})" for title, fname in images.items()] or ["No plots (no data, or plots disabled)."]
    lines += ["", "## Reproducibility", ""] + _env_section(env, env_note, config, summary)
    lines += ["", "## Resolved config", ""]
    lines += ["```yaml", config_text.rstrip(), "```"] if config_text else ["No config.yaml in the run directory."]
    return "\n".join(lines) + "\n"
