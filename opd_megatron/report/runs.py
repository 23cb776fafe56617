"""The reproducibility report of one run directory: RUN_DIR/report.md (+ PNG plots next to it).

``write_report`` is called at the end of every run, also a failed one, so everything it reads
may be missing or partial: a truncated last line of metrics.jsonl, no summary.json, no evals.
It reads only files, so a report can be rebuilt later on any machine.

Files read from RUN_DIR (all optional):

* ``config.yaml``: the resolved config (section ``run.seed``, ``objective.method``, ...).
* ``metrics.jsonl``: one JSON object per line, keys in ``report.metrics.METRIC_KEYS``.
* ``summary.json``: end-of-run facts, keys in ``report.inputs.SUMMARY_KEYS``.
* ``environment.json``: ``collect_environment()`` captured at run start (git, versions,
  hardware, Slurm); without it they are collected when the report is written, and say so.
"""

from __future__ import annotations

from pathlib import Path

from opd_megatron.errors import ConfigError
from opd_megatron.report.environment import collect_environment
from opd_megatron.report.inputs import read_config, read_json
from opd_megatron.report.metrics import METRICS_FILE, read_metrics
from opd_megatron.report.plots import write_plots
from opd_megatron.report.render import render_report


def write_report(run_dir, plots: bool = True) -> Path:
    """Write RUN_DIR/report.md (and PNG plots) from whatever the run left; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist; pass a runs/<name> directory")
    if not any((run_dir / f).is_file() for f in ("config.yaml", METRICS_FILE, "summary.json")):
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml, metrics.jsonl or "
                          "summary.json); pass a runs/<name> directory")
    config_text, config = read_config(run_dir)
    records, num_bad = read_metrics(run_dir / METRICS_FILE)
    summary = read_json(run_dir / "summary.json")
    env = read_json(run_dir / "environment.json")
    env_note = "captured at run start (environment.json)"
    if env is None:
        env, env_note = collect_environment(), "collected when this report was written (no environment.json)"
    images = write_plots(run_dir, records) if plots else {}
    text = render_report(run_dir, config_text, config, records, num_bad, summary, env, env_note, images)
    out = run_dir / "report.md"
    out.write_text(text)
    return out
