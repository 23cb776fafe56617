"""Fault injection against one uninterrupted reference run (real SGLang servers, the shared
session fixtures, and the real learner); each faulted run must end bit-identical to it:

- the learner SIGKILLed at 5 random points (mid-step, mid-sync, wherever the signal lands) and
  once between a step's metrics line and its checkpoint, with a checkpoint every 3 steps (so a
  resume replays steps), the same command rerun after each, then rerun once more when finished:
  metrics.jsonl ends equal to the uninterrupted run's, each step once (timings aside);
- SIGKILL inside a checkpoint write: the previous checkpoint stays intact and is resumed;
- SIGKILL inside a weight push: the session it left open on the student server is closed;
- a full disk while writing a checkpoint (a real size-limited tmpfs): a one-line error, exit 1,
  nothing partial left, the old checkpoint intact and resumed from once there is space."""

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
from tests.engines_fixtures import restore_student

pytestmark = pytest.mark.slow
NUM_STEPS = 14


def _command(models, student_server, teacher_server, name: str, *extra: str):
    return [PYTHON, "-m", "opd_megatron", "run", str(REPO / "recipes/opd-tiny-cpu.yaml"),
            f"student.path={models['student']}", f"teacher.path={models['teacher']}",
            "student.prepare=null", "teacher.prepare=null",
            f"engines.student.urls=[{student_server.url}]", f"engines.teacher.urls=[{teacher_server.url}]",
            f"run.num_steps={NUM_STEPS}", "rollout.prompts_per_step=8", "eval.num_prompts=8",
            "eval.interval=0", "checkpoint.interval=1", "checkpoint.keep=2", "run.quiet=true",
            f"run.name={name}", *extra]


def _last_step(metrics: Path) -> int:
    if not metrics.is_file():
        return -1
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=-1)


def _start(cmd, cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("a") as out:  # a file, not a pipe (see test_loop_e2e.py)
        return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _records(run_dir: Path) -> list:
    """metrics.jsonl without the wall-clock fields."""
    timing = {"stage_seconds", "tokens_per_s"}
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "hf" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(engine_models, student_server, teacher_server, tmp_path_factory) -> Path:
    """The uninterrupted run every faulted run is compared with; returns its run directory."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    log = tmp / "run.log"
    ref = subprocess.run(_command(engine_models, student_server, teacher_server, "uninterrupted"), cwd=tmp,
                         stdout=log.open("a"), stderr=subprocess.STDOUT, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert ref.returncode == 0, log.read_text()[-3000:]
    yield tmp / "runs" / "uninterrupted"
    restore_student(engine_models, student_server)


def _assert_same_weights(ref_dir: Path, run_dir: Path, what: str) -> None:
    a, b = _weights(ref_dir), _weights(run_dir)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), f"weights differ from the uninterrupted run after {what}"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert all(n.startswith("step_") for n in ckpts), ckpts  # no temp directory left behind


def test_sigkill_at_random_points_then_resume_is_bit_exact(engine_models, student_server, teacher_server,
                                                           reference, tmp_path):
    log = tmp_path / "runs.log"
    rng = random.Random(20261201)
    cmd = _command(engine_models, student_server, teacher_server, "killed", "checkpoint.interval=3")
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    with log.open("a") as out:  # killed after step 5's line, before anything checkpoints it (step 3 does)
        code = subprocess.run(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env=dict(os.environ, PYTHONPATH=str(REPO), OPD_FAULT_KILL_AFTER_LOG="5")).returncode
    assert code == -signal.SIGKILL and _last_step(metrics) == 5, log.read_text()[-3000:]
    killed_at = [5]
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
    for _ in range(2):  # to the end, then the finished run once more
        final = _start(cmd, tmp_path, log)
        assert final.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert log.read_text().count("resumed from") >= 6  # every rerun resumed
    assert killed_at[-1] < NUM_STEPS
    summary = json.loads((tmp_path / "runs/killed/summary.json").read_text())
    assert summary["completed"] and summary["steps"] == NUM_STEPS
    _assert_same_weights(reference, tmp_path / "runs/killed", f"kills at {killed_at}")
    records = _records(tmp_path / "runs/killed")
    assert [r["step"] for r in records] == list(range(NUM_STEPS + 1)) + [NUM_STEPS]  # step 0, 1..14, final
    assert records == _records(reference), f"metrics.jsonl differs from the uninterrupted run's after kills at {killed_at}"


def test_sigkill_inside_a_checkpoint_write_keeps_and_resumes_the_previous_one(
        engine_models, student_server, teacher_server, reference, tmp_path):
    cmd = _command(engine_models, student_server, teacher_server, "killed-in-checkpoint")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "runs.log"
    ckpts = tmp_path / "runs/killed-in-checkpoint/checkpoints"
    with log.open("a") as out:
        code = subprocess.run(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env=dict(env, OPD_FAULT_KILL_IN_CHECKPOINT="6")).returncode
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    names = sorted(p.name for p in ckpts.iterdir())
    assert names[1:] == ["step_000004", "step_000005"] and names[0].startswith(".step_000006.tmp-"), names
    assert (ckpts / "step_000005/meta.json").is_file()
    with log.open("a") as out:
        code = subprocess.run(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=600, env=env).returncode
    assert code == 0, log.read_text()[-3000:]
    assert "(step 5)" in log.read_text().split("resumed from")[-1].splitlines()[0]
    _assert_same_weights(reference, tmp_path / "runs/killed-in-checkpoint", "a kill inside the step-6 checkpoint")


def test_sigkill_inside_a_weight_push_then_resume(engine_models, student_server, teacher_server, reference, tmp_path):
    """The learner dies between /begin_weight_update and /end_weight_update of step 3's push:
    the student server keeps the open session (it refused every later push once: the CI failure
    of stop 12); the rerun closes it, pushes every weight and ends bit-identical."""
    cmd = _command(engine_models, student_server, teacher_server, "killed-in-push")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "runs.log"
    with log.open("a") as out:
        code = subprocess.run(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env=dict(env, OPD_FAULT_KILL_IN_PUSH="3")).returncode
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    with log.open("a") as out:
        code = subprocess.run(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=600, env=env).returncode
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert f"{student_server.url} had a weight-update session left open" in text
    assert "(step 2)" in text.split("resumed from")[-1].splitlines()[0]
    _assert_same_weights(reference, tmp_path / "runs/killed-in-push", "a kill inside the step-3 weight push")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_full_disk_during_a_checkpoint_write(engine_models, student_server, teacher_server, reference, tmp_path):
    """The run directory lives on a tmpfs with room for one checkpoint and a half: the step-2
    write (keep=1 holds the old one until the new one is in place) runs out of space."""
    ckpt_bytes = _du(reference / "checkpoints" / "step_000014")
    other_bytes = _du(reference) - _du(reference / "checkpoints") - _du(reference / "hf")
    size_kib = (other_bytes + int(1.5 * ckpt_bytes)) // 1024 + 512
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    cmd = _command(engine_models, student_server, teacher_server, "full-disk", f"run.output_dir={disk}",
                   "checkpoint.keep=1")
    # A private mount namespace: the tmpfs exists only for this shell, which copies the run
    # directory out before it ends.
    script = (f'mount -t tmpfs -o size={size_kib}k tmpfs {disk} && cd {tmp_path} && '
              f'{{ "$@" > full.log 2>&1; echo $? > full.rc; }}; cp -a {disk} {saved}')
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    assert probe.returncode == 0, f"this test needs mount namespaces (root in a container): {probe.stderr!r}"
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
                   check=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    text = (tmp_path / "full.log").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", text[-3000:]
    error = [line for line in text.splitlines() if "not written" in line]
    assert len(error) == 1 and "the disk is full" in error[0], text[-3000:]
    assert "step_000001 is intact" in error[0]
    run = saved / "full-disk"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]  # nothing partial
    assert (run / "checkpoints/step_000001/meta.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["completed"] and "not written" in summary["error"]
    # With space again, the same command resumes from the intact checkpoint.
    resume = _command(engine_models, student_server, teacher_server, "full-disk", f"run.output_dir={saved}",
                      "checkpoint.keep=1")
    log = tmp_path / "resume.log"
    with log.open("w") as out:
        code = subprocess.run(resume, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env=dict(os.environ, PYTHONPATH=str(REPO))).returncode
    assert code == 0, log.read_text()[-3000:]
    assert "(step 1)" in log.read_text()
    _assert_same_weights(reference, run, "a full disk at the step-2 checkpoint")
