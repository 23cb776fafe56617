"""The reproducibility report of a run, and the blog-style comparison of several runs.

    opd report RUN_DIR                      writes RUN_DIR/report.md (+ PNG plots next to it)
    opd report --compare RUN_A RUN_B ...    prints the method table (first run = baseline)
    python -m opd_megatron.report.opd_report RUN_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from opd_megatron.errors import ConfigError
from opd_megatron.report.compare import compare_table
from opd_megatron.report.runs import write_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opd report", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", help="run directories (runs/<name>)")
    p.add_argument("--compare", action="store_true", help="print the method table of the runs")
    p.add_argument("--teacher-accuracy", type=float, help="override the teacher accuracy (0-1)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--output", help="with --compare: also write the table (Markdown) here")
    return p


def cli_main(argv: Sequence[str]) -> int:
    """`opd report RUN_DIR` or `opd report --compare RUN_DIR ...`."""
    args = _parser().parse_args(list(argv))
    for d in args.run_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"run directory {d} does not exist; pass runs/<name> directories")
    if args.compare:
        table = compare_table([Path(d) for d in args.run_dirs], args.teacher_accuracy)
        print(table)
        if args.output:
            Path(args.output).write_text(table + "\n")
        return 0
    if len(args.run_dirs) != 1:
        raise ConfigError("opd report: one RUN_DIR, or --compare with several")
    print(write_report(args.run_dirs[0], plots=not args.no_plots))
    return 0


if __name__ == "__main__":
    from opd_megatron.errors import cli_entry

    raise SystemExit(cli_entry(cli_main))
