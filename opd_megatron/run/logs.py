"""Run logs: stage timers, metrics.jsonl + TensorBoard events, and the live progress line.

Each step appends one JSON object to ``metrics.jsonl`` (schema and reader in
opd_megatron.report.metrics) and the same scalars to TensorBoard. A resume first rewinds both
to the checkpoint's step (``MetricsWriter.rewind``): the steps it replays are written again, so
after any kill and resume the file holds each step once. The progress display is a
rich live bar (step, reverse KL, accuracy, tokens/s, ETA) on a terminal unless ``run.quiet``;
otherwise one plain line per logged step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

from opd_megatron.report.metrics import METRICS_FILE


class StageTimer:
    """Accumulates wall seconds per stage (rollout, teacher_score, train, weight_sync, eval, ...)."""

    def __init__(self) -> None:
        self.step_s: Dict[str, float] = {}
        self.total_s: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.step_s[name] = self.step_s.get(name, 0.0) + dt
            self.total_s[name] = self.total_s.get(name, 0.0) + dt

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` of a stage timed elsewhere (a server's busy time inside a stream)."""
        self.step_s[name] = self.step_s.get(name, 0.0) + seconds
        self.total_s[name] = self.total_s.get(name, 0.0) + seconds

    def pop_step(self) -> Dict[str, float]:
        out, self.step_s = self.step_s, {}
        return {k: round(v, 4) for k, v in out.items()}


class MetricsWriter:
    """Appends step records to metrics.jsonl and TensorBoard; prints progress."""

    def __init__(self, run_dir: Path, num_steps: int, quiet: bool):
        self.path = run_dir / METRICS_FILE
        self.num_steps, self.quiet = num_steps, quiet or not sys.stdout.isatty()
        self.t0 = time.perf_counter()
        self._progress = None
        if not self.quiet:  # a live bar on a terminal; plain lines in logs and under run.quiet
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._task = self._progress.add_task("train", total=num_steps, info="")
            self._progress.start()
        self._tb_dir = run_dir / "tensorboard"
        self._tb = None
        self._purge_step: Optional[int] = None

    def rewind(self, step: Optional[int]) -> None:
        """Make the logs what they were after ``step``, the step a resume starts from (None: no
        checkpoint, nothing kept): later records, final records and a line torn by a kill are
        dropped (the run writes them again), atomically."""
        self._purge_step = (step or 0) + 1  # TensorBoard drops its events from this step on
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if step is not None and isinstance(r, dict) and int(r.get("step", 0)) <= step and not r.get("final"):
                kept.append(line)
        if len(kept) < len(lines):
            tmp = self.path.with_name(f".{self.path.name}.rewind")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def _tensorboard(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; keep logs working without it
                return None
            self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=self._purge_step)
        return self._tb

    def write(self, record: Dict, print_line: bool = True) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        step = int(record.get("step", 0))
        if self._tensorboard() is not None:
            for k, v in _flatten(record).items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._progress is not None:
            info = " | ".join(self._line(record).split(" | ")[1:-1])
            self._progress.update(self._task, completed=step, info=info)
            if print_line and "accuracy" in record:
                self._progress.console.print(self._line(record))
        elif print_line:
            print(self._line(record), flush=True)

    def _line(self, r: Dict) -> str:
        step = int(r.get("step", 0))
        elapsed = time.perf_counter() - self.t0
        done = max(step, 1)
        eta = elapsed / done * max(self.num_steps - step, 0)
        parts = [f"step {step}/{self.num_steps}"]
        for key, fmt in (("reverse_kl", "rev_kl {:.4f}"), ("loss", "loss {:.4f}"),
                         ("accuracy", "acc {:.3f}"), ("tokens_per_s", "{:.0f} tok/s"),
                         ("grad_norm", "gnorm {:.2f}"), ("response_len_mean", "len {:.0f}"),
                         ("truncated_frac", "cut {:.0%}")):
            if r.get(key) is not None:
                parts.append(fmt.format(r[key]))
        parts.append(f"eta {eta:.0f}s")
        return " | ".join(parts)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _flatten(d: Dict, prefix: str = "") -> Dict:
    out: Dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def optional_float(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(x)
