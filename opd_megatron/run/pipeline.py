"""The step as a pipeline (rollout.max_staleness=1): the next step's batch is sampled and scored
on a background thread while the learner trains this step (``loop.train`` starts it and waits
for it before the weight push). The thread only talks to the servers; every learner call stays
on the loop's thread, so a multi-process learner's collectives never interleave."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict


class Ahead:
    """``fn()`` running on its own thread; ``result()`` joins it and returns (or raises) its outcome."""

    def __init__(self, fn: Callable[[], Any]):
        self._box: Dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), name="opd-rollout-ahead", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._box["value"] = fn()
        except BaseException as exc:  # re-raised on the loop's thread by result()
            self._box["error"] = exc

    def result(self) -> Any:
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]
