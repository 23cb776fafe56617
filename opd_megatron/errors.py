"""Failures, exit codes and the one wrapper that turns them into the CLI's contract.

Exit codes: 0 success, 1 runtime failure, 2 bad input (one line on stderr naming the key or
file; nothing written), 3 preempted (checkpoint written; rerun to resume).
"""

from __future__ import annotations

import sys
from typing import Callable, List, Optional

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_PREEMPTED = 0, 1, 2, 3


class ConfigError(Exception):
    """Bad input: a recipe key, a value, a file. One line naming the key or file and the fix.

    The CLI prints it without a traceback and exits 2; nothing has been written yet.
    """


class RuntimeFailure(Exception):
    """A failure while running (a server died past its retries, a NaN under stop policy). Exit 1."""


def cli_entry(fn: Callable[[List[str]], int], argv: Optional[List[str]] = None) -> int:
    """Run a command's ``cli_main(argv)`` under the exit-code contract: ConfigError -> 2 and
    RuntimeFailure -> 1, each one line on stderr (``opd`` itself and every ``python -m
    opd_megatron.<module>`` entry point use it)."""
    try:
        return int(fn(list(sys.argv[1:] if argv is None else argv)) or 0)
    except ConfigError as e:
        print(f"opd: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeFailure as e:
        print(f"opd: failed: {e}", file=sys.stderr)
        return EXIT_RUNTIME
