"""Keep library chatter off the console: a run prints its own progress and results; Python
warnings and the log records of the libraries under it (transformers, datasets, Megatron-Core,
torch) go to ``<run_dir>/logs/library.log`` instead, where they are kept for debugging."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LIBRARY_LOGGERS = ("transformers", "datasets", "megatron", "torch", "huggingface_hub", "urllib3")
LOG_NAME = "library.log"


@contextmanager
def library_output_to(log_dir: Path) -> Iterator[Path]:
    """Within the block, warnings and library log records are written to ``log_dir/library.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_NAME
    with path.open("a") as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        saved = {}
        for name in LIBRARY_LOGGERS:
            log = logging.getLogger(name)
            saved[name] = (log.handlers[:], log.propagate)
            log.handlers[:] = [handler]
            log.propagate = False
        old_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
            out.write(warnings.formatwarning(message, category, filename, lineno, line))
            out.flush()

        warnings.showwarning = show
        try:
            yield path
        finally:
            warnings.showwarning = old_show
            for name, (handlers, propagate) in saved.items():
                log = logging.getLogger(name)
                log.handlers[:] = handlers
                log.propagate = propagate
