"""Fault injection: the learner process is SIGKILLed at 5 random points of a run (mid-step,
mid-checkpoint, mid-sync: wherever the signal lands); rerunning the same command resumes from
the newest complete checkpoint each time, and the final weights are bit-identical to an
uninterrupted run. Real SGLang servers (the shared session fixtures) and the real learner."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.slow
NUM_STEPS = 14


def _command(models, student_server, teacher_server, name: str):
    return [PYTHON, "-m", "opd_megatron", "run", str(REPO / "recipes/opd-tiny-cpu.yaml"),
            f"student.path={models['student']}", f"teacher.path={models['teacher']}",
            "student.prepare=null", "teacher.prepare=null",
            f"engines.student.urls=[{student_server.url}]", f"engines.teacher.urls=[{teacher_server.url}]",
            f"run.num_steps={NUM_STEPS}", "rollout.prompts_per_step=8", "eval.num_prompts=8",
            "eval.interval=0", "checkpoint.interval=1", "checkpoint.keep=2", "run.quiet=true",
            f"run.name={name}"]


def _last_step(metrics: Path) -> int:
    if not metrics.is_file():
        return -1
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=-1)


def _start(cmd, cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("a") as out:  # a file, not a pipe (see test_loop_e2e.py)
        return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "hf" / "model.safetensors"))


def test_sigkill_at_random_points_then_resume_is_bit_exact(engine_models, student_server, teacher_server,
                                                           tmp_path):
    from opd_megatron.config.schema import EnginesConfig
    from opd_megatron.engines import EngineClient

    log = tmp_path / "runs.log"
    ref = subprocess.run(_command(engine_models, student_server, teacher_server, "uninterrupted"), cwd=tmp_path,
                         stdout=log.open("a"), stderr=subprocess.STDOUT, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert ref.returncode == 0, log.read_text()[-3000:]

    rng = random.Random(20261201)
    cmd = _command(engine_models, student_server, teacher_server, "killed")
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    killed_at = []
    for _ in range(5):
        # Each (re)start must resume and log one more step; then SIGKILL after a random delay,
        # which lands anywhere in the next step (rollout, scoring, training, sync, checkpoint).
        target = max(1, _last_step(metrics) + 1)
        proc = _start(cmd, tmp_path, log)
        deadline = time.monotonic() + 300
        while _last_step(metrics) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, "run ended before its kill: " + log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed_at.append(_last_step(metrics))
    final = _start(cmd, tmp_path, log)
    assert final.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert log.read_text().count("resumed from") >= 5  # every rerun after the first kill resumed
    assert killed_at[-1] < NUM_STEPS
    summary = json.loads((tmp_path / "runs/killed/summary.json").read_text())
    assert summary["completed"] and summary["steps"] == NUM_STEPS
    a, b = _weights(tmp_path / "runs/uninterrupted"), _weights(tmp_path / "runs/killed")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), f"weights differ after kills at {killed_at}"
    ckpts = sorted(p.name for p in (tmp_path / "runs/killed/checkpoints").iterdir())
    assert all(n.startswith("step_") for n in ckpts), ckpts  # no temp directory left behind as a checkpoint
    # the shared server gets its original weights back
    EngineClient.from_config([student_server.url], EnginesConfig()).post_each(
        "/update_weights_from_disk", {"model_path": str(engine_models["student"])})
