"""``opd compare``'s outputs: compare.json, compare.md and accuracy_vs_flops.png in the
comparison's directory (the numbers come from opd_megatron.report.efficiency)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from opd_megatron.report import efficiency as eff


def ladder_summary(records: Sequence[dict], samples_per_step: float, fit_from_step: int) -> Dict[str, Any]:
    """The ladder's doubling points, its fit (past ``fit_from_step``) and its end (the start)."""
    points = eff.eval_points(records)
    if not points:
        raise ValueError("the SFT ladder has no evals")
    start = points[-1]
    ladder = [p for p in points if p["step"] >= fit_from_step]
    fit = eff.fit_log_linear([p["step"] * samples_per_step for p in ladder], [p["accuracy"] for p in ladder]) \
        if len(ladder) >= 2 else None
    samples = start["step"] * samples_per_step
    per_sample = (start["teacher_flops"] / samples, start["student_flops"] / samples)
    kls = [r["reverse_kl"] for r in records if isinstance(r.get("reverse_kl"), (int, float))]
    return {"points": points, "fit_points": ladder, "start_kl": kls[-1] if kls else None, "fit": fit, "start": start, "start_samples": samples,
            "flops_per_sample": per_sample, "samples_per_step": samples_per_step}


def write_plot(path: Path, ladder: Dict[str, Any], curves: Dict[str, List[List[Dict[str, float]]]],
               target: float) -> str:
    """Accuracy vs FLOPs from scratch (log axis): the ladder and its fit, every seed of every arm
    (offset by the ladder's FLOPs at the start), the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = ladder["start"]
    base = start["teacher_flops"] + start["student_flops"]
    per = sum(ladder["flops_per_sample"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [p for p in ladder["points"] if p["step"]]
    ax.plot([p["teacher_flops"] + p["student_flops"] for p in pts], [100 * p["accuracy"] for p in pts],
            "k.-", label="SFT from scratch (the ladder)")
    fit = ladder["fit"]
    if fit is not None:
        lo = ladder["fit_points"][0]["step"] * ladder["samples_per_step"]
        hi = fit.samples_for(min(target + 0.05, 1.0)) or lo
        xs = [lo * (hi / lo) ** (i / 40) for i in range(41)] if hi > lo else [lo]
        ax.plot([x * per for x in xs], [100 * fit.accuracy_at(x) for x in xs], "k--", alpha=0.6,
                label=f"SFT fit: {100 * fit.slope:.1f} points per doubling of data")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, runs) in enumerate(curves.items()):
        for j, run in enumerate(runs):
            ax.plot([base + p["teacher_flops"] + p["student_flops"] for p in run], [100 * p["accuracy"] for p in run],
                    color=colors[i % len(colors)], alpha=0.8, lw=1.2, label=arm if j == 0 else None)
    ax.axhline(100 * target, color="grey", lw=0.8, ls=":", label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs from scratch (teacher + student, all roles; log)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("accuracy vs FLOPs: SFT ladder, then each arm from its end")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def scale_table(mfu: float, sampling_mfu: float, peak_tflops: float = 989.0) -> str:
    """The published TML rows in GPU-hours through our FLOPs account."""
    from opd_megatron.plan.flops import tml_table

    rows = eff.scale_rows(tml_table(), peak_tflops, mfu, sampling_mfu)
    by = {r["row"]: r for r in rows}
    opd = by["OPD"]["gpu_hours"]
    lines = ["| row | AIME'24 | teacher FLOPs | student FLOPs | GPU-hours, student roles | GPU-hours, all | "
             "OPD's advantage (student roles / all) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['aime24']:.0%} | {r['teacher_flops']:.3g} | {r['student_flops']:.3g} | "
                     f"{r['student_gpu_hours']:,.0f} | {r['gpu_hours']:,.0f} | "
                     f"{r['student_gpu_hours'] / opd:.1f}x / {r['gpu_hours'] / opd:.1f}x |")
    return "\n".join(lines)


def write_compare(root: Path, *, name: str, ladder: Dict[str, Any], ladder_source: str, target: float,
                  teacher_accuracy: Optional[float], by_level: Dict[float, Sequence[eff.ArmResult]], sft_arm: str,
                  curves: Dict[str, List[List[Dict[str, float]]]], sweep: Dict[str, List[eff.ArmResult]],
                  reused: Sequence[str], mfu: float, sampling_mfu: float) -> str:
    """Write compare.json/.md and the plot; returns the Markdown. ``by_level``: the arms' results at
    the target, then at each lower level tabulated from the same runs."""
    arms = by_level[target]
    tables = {level: eff.efficiency_rows(results, sft_arm, ladder["start"]) for level, results in by_level.items()}
    rows = tables[target]

    def table_at(level: float) -> str:
        return eff.markdown_table(tables[level], level, ladder["start"], ladder["start_samples"], ladder["fit"],
                                  ladder["samples_per_step"], ladder["flops_per_sample"], sft_arm)

    table = table_at(target)
    lower = []
    for level in by_level:
        if level != target:
            lower += [f"### At {level:.1%}, from the same runs", "", table_at(level), ""]
    fit = ladder["fit"]
    fp = ladder["fit_points"]
    fit_line = (f"accuracy = {fit.intercept:.3f} + {fit.slope:.4f} * log2(samples) over the {fit.num_points} evals "
                f"from step {int(fp[0]['step'])} to {int(fp[-1]['step'])}, R^2 {fit.r2:.3f}; "
                f"{100 * fit.slope:.1f} points per doubling of the data" if fit else "too few ladder points for a fit")
    ladder_rows = ["| step | samples | accuracy | teacher FLOPs | student FLOPs |", "|---|---|---|---|---|"] + [
        f"| {int(p['step'])} | {p['step'] * ladder['samples_per_step']:,.0f} | {p['accuracy']:.1%} | "
        f"{p['teacher_flops']:.3g} | {p['student_flops']:.3g} |" for p in eff.doubling_points(ladder["points"], 1)]
    sweep_rows = ["| arm | lr | reached target at (FLOPs) | best accuracy | steps run | chosen |", "|---|---|---|---|---|---|"]
    for arm, results in sweep.items():
        chosen = next(a.lr for a in arms if a.name == arm)
        for r in results:
            hit = r.reached[0]
            sweep_rows.append(f"| {arm} | {r.lr:g} | {hit['teacher_flops'] + hit['student_flops']:.3g} | " if hit else
                              f"| {arm} | {r.lr:g} | not reached | ")
            sweep_rows[-1] += f"{r.best[0]:.1%} | {r.steps[0]} | {'yes' if r.lr == chosen else ''} |"
    image = write_plot(root / "accuracy_vs_flops.png", ladder, curves, target)
    ratio = f" ({target / teacher_accuracy:.0%} of the teacher's {teacher_accuracy:.1%})" if teacher_accuracy else ""
    md = [f"# Compute efficiency: {name}", "",
          f"Target: {target:.1%} held-out accuracy{ratio}; start: {ladder['start']['accuracy']:.1%} after SFT from "
          f"scratch on {ladder['start_samples']:,.0f} teacher samples. Mean ± sample sd over seeds; FLOPs and "
          "steps are counted from the start to the first eval at the target (linear between the evals around "
          "it). CE vs SFT, as the TML blog counts it: SFT's FLOPs from scratch to the target (the ladder, then "
          "the continued SFT) over the arm's FLOPs from the start, SFT's student FLOPs only, or with the teacher "
          "sampling of its data; increments: continued SFT's FLOPs from the start over the arm's. Wall seconds: "
          "each run's own (servers shared, started once).", "", table, "",
          *(["## Lower levels", "", "Each run stops only at the target, so its curve passes every lower level; "
             "these tables read the same runs at lower accuracies.", "", *lower] if lower else []),
          f"![accuracy vs FLOPs]({image})", "", "## What each arm did", "",
          eff.diagnostics_table(rows, ladder.get("start_kl")), "", "## The SFT ladder", "", f"Source: {ladder_source}. Fit: {fit_line}.",
          "", *ladder_rows, ""]
    if sweep:
        md += ["## Learning-rate sweep (first seed)", "", *sweep_rows, ""]
    md += ["## At the published scale", "",
           f"The TML rows through the FLOPs account (student Qwen3-8B, teacher Qwen3-32B), in H100/H200 GPU-hours at "
           f"MFU {mfu:g} for training and teacher scoring and {sampling_mfu:g} for sampling (989 TFLOP/s dense "
           "BF16); OPD's GPU-hours (all roles) against each row's student roles only and all roles, as the "
           "blog's 9x and 30x do with FLOPs (the blog says ~18x in GPU-hours). The Qwen3 report: OPD 1,800 "
           "GPU-hours vs RL 17,920 for Qwen3-8B (74.4 vs 67.6 AIME'24).", "", scale_table(mfu, sampling_mfu), "",
           "## Reused", ""]
    md += [f"- {line}" for line in reused] or ["- nothing"]
    text = "\n".join(md) + "\n"
    (root / "compare.md").write_text(text)
    data = {"target_accuracy": target, "teacher_accuracy": teacher_accuracy, "rows": rows,
            "lower_levels": {f"{level:g}": t for level, t in tables.items() if level != target},
            "ladder": {k: (asdict(v) if isinstance(v, eff.LogFit) else v) for k, v in ladder.items()},
            "sweep": {a: [asdict(r) for r in rs] for a, rs in sweep.items()}, "reused": list(reused)}
    (root / "compare.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return text
