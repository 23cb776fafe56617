"""The reproducibility report of a run directory and the comparison of several runs."""

from opd_megatron.report.runs import (cli_main, collect_environment, compare_table, read_metrics,
                                      write_environment, write_report)

__all__ = ["cli_main", "collect_environment", "compare_table", "read_metrics", "write_environment",
           "write_report"]
