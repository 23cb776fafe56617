"""The run report's Markdown: final metrics, benchmarks with their protocols, FLOPs by role, time by stage, plots, the
environment and the resolved config.

Pure functions over what was read from a run directory (records of metrics.jsonl,
summary.json, the environment), so a partial run renders what it has and states what is
missing instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from opd_megatron.report.outcome import ROLE_ORDER, final_flops, outcome, stage_totals


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


def status_line(summary: Optional[dict]) -> str:
    if summary is None:
        return "**incomplete**: no summary.json (killed, or still running); figures below come from metrics.jsonl"
    if summary.get("completed"):
        return "**completed**"
    err = summary.get("error")
    return "**failed / stopped early**" + (f": {err}" if err else "")


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


def _benchmark_section(records: List[dict], config: dict) -> List[str]:
    """eval.benchmarks at the first and last evaluation, each with the protocol that produced it."""
    from types import SimpleNamespace

    from opd_megatron.evaluation.suite import protocol_line, sampling_from_eval_config

    suffix = "_avg_at_k"
    evals = [r for r in records if any(k.endswith(suffix) for k in r)]
    names = sorted({k[:-len(suffix)] for r in evals for k in r if k.endswith(suffix)})
    if not names:
        return ["No benchmarks evaluated (eval.benchmarks is empty)."]
    eval_cfg = SimpleNamespace(**{"preset": "none", **(config.get("eval") or {})})
    rows = []
    for name in names:
        seen = [r for r in evals if isinstance(r.get(name + suffix), (int, float))]
        first, last = seen[0], seen[-1]
        sampling = sampling_from_eval_config(eval_cfg, benchmark=name)
        rows.append([name, f"{fmt(first[name + suffix], pct=True)} (step {first.get('step')})",
                     f"{fmt(last[name + suffix], pct=True)} (step {last.get('step')})",
                     protocol_line(eval_cfg.preset, name, sampling)])
    return _table(["benchmark", "avg@k first", "avg@k last", "protocol"], rows)


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
    lines += ["", "## Benchmarks", ""] + _benchmark_section(records, config)
    lines += ["", "## FLOPs by role", "", "Per token: 2N forward (+ attention), 6N training "
              "(opd_megatron.plan.flops), counted from the tokens processed.", ""]
    lines += _flops_section(final_flops(records, summary))
    stages = stage_totals(records, summary)
    lines += ["", "## Time by stage", ""]
    if any(k.startswith("overlap:") for k in stages):
        lines += ["Stages marked `overlap:` ran beside the loop (the next batch sampled while the learner "
                  "trained, or a server's busy time inside a stream): they are not part of the wall time the "
                  "other rows add up to.", ""]
    lines += _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in stages.items()]) if stages else ["No stage times recorded."]
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({fname})" for title, fname in images.items()] or ["No plots (no data, or plots disabled)."]
    lines += ["", "## Reproducibility", ""] + _env_section(env, env_note, config, summary)
    lines += ["", "## Resolved config", ""]
    lines += ["```yaml", config_text.rstrip(), "```"] if config_text else ["No config.yaml in the run directory."]
    return "\n".join(lines) + "\n"
