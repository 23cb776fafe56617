"""PNG plots of a run next to its report.md (matplotlib, Agg backend): accuracy vs FLOPs,
reverse KL vs step, time per step by stage. Only plots with data are drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from opd_megatron.report.outcome import accuracy_curve


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
        # The loop's own stages stack to its wall time; what ran beside it (overlap:*, the next
        # batch sampled while the learner trained, a server's busy time in a stream) is a second
        # bar per step, never added to the first.
        keys = sorted({k for r in steps for k in r["stage_seconds"]})
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [r["step"] for r in steps]
        overlapped = [k for k in keys if k.startswith(OVERLAP)]
        width = 0.45 if overlapped else 0.9
        for group, shift in (([k for k in keys if not k.startswith(OVERLAP)], -width / 2 if overlapped else 0.0),
                             (overlapped, width / 2)):
            bottom = [0.0] * len(steps)
            for stage in group:
                vals = [float(r["stage_seconds"].get(stage, 0.0)) for r in steps]
                ax.bar([x + shift for x in xs], vals, bottom=bottom, label=stage, width=width,
                       hatch="//" if stage.startswith(OVERLAP) else None)
                bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("step")
        ax.set_ylabel("wall seconds")
        ax.set_title("time per step by stage" + (" (left: the loop; right, hatched: beside it)" if overlapped else ""))
        ax.legend(fontsize=7)
        images["stage-time breakdown"] = _save(fig, run_dir / "stage_seconds.png")
    return images


OVERLAP = "overlap:"


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
