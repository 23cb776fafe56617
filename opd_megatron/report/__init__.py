"""The reproducibility report of a run directory and the comparison of several runs.

metrics      the metrics.jsonl schema (METRIC_KEYS) and its one reader, read_metrics
inputs       config.yaml, summary.json (SUMMARY_KEYS), environment.json readers
environment  collect_environment / write_environment (git, versions, hardware, Slurm)
outcome      what a run reached: FLOPs, accuracy curve, FLOPs to a target, final metrics
render       report.md Markdown;  plots: its PNG plots
runs         write_report of one run directory;  compare: compare_table of several
opd_report   `opd report` (cli_main)
"""

from opd_megatron.report.compare import compare_table
from opd_megatron.report.environment import collect_environment, write_environment
from opd_megatron.report.inputs import SUMMARY_KEYS
from opd_megatron.report.metrics import METRIC_KEYS, METRICS_FILE, read_metrics
from opd_megatron.report.outcome import flops_to_reach
from opd_megatron.report.runs import write_report

__all__ = ["METRICS_FILE", "METRIC_KEYS", "SUMMARY_KEYS", "cli_main", "collect_environment",
           "compare_table", "flops_to_reach", "read_metrics", "write_environment", "write_report"]


def __getattr__(name: str):
    # cli_main is loaded on first use, so `python -m opd_megatron.report.opd_report` does not find
    # its own module already imported by the package.
    if name == "cli_main":
        from opd_megatron.report.opd_report import cli_main

        return cli_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
