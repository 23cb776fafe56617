"""Fault injection: the run's own student SGLang server is SIGKILLed while step 2's rollout
request is in flight, and its teacher server while step 4's scoring request is. The launcher
restarts each on its port, the student gets the learner's current weights, the step's call is
retried; the run finishes every step once, with every training metric of every step (loss,
grad norm, KL, ratios) bit-identical to an uninterrupted run with the same seed: no step was
lost, repeated or fed other samples. The final weights are bit-identical too: the teacher's
prefix cache is flushed before every teacher call (engines.flush_teacher_cache), so the
restarted teacher, which starts empty, scores exactly as the old one did (without the flush the
weights differed by up to 1e-8: cached prefixes move the last bit of a few logprobs). The
uninterrupted run uses the session's shared servers (the run pushes its initial weights first),
so only the faulted run pays for launching its own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO
from tests.engines_fixtures import restore_student

pytestmark = pytest.mark.slow
NUM_STEPS = 5


def _run(tmp: Path, models, name: str, *servers: str, faults: str = "") -> tuple:
    cmd = [PYTHON, "-m", "opd_megatron", "run", str(REPO / "recipes/opd-tiny-cpu.yaml"),
           f"student.path={models['student']}", f"teacher.path={models['teacher']}",
           "student.prepare=null", "teacher.prepare=null", "engines.device=cpu",
           "engines.startup_timeout_s=240", *servers,
           f"run.num_steps={NUM_STEPS}", "rollout.prompts_per_step=8", "eval.num_prompts=8",
           "eval.interval=0", "checkpoint.interval=0", "run.quiet=true", f"run.name={name}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if faults:
        env["OPD_FAULT_KILL_SERVER"] = faults
    log = tmp / f"{name}.log"
    with log.open("w") as out:  # a file, not a pipe (see test_loop_e2e.py)
        code = subprocess.run(cmd, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900).returncode
    return code, log.read_text()


def _train_records(run_dir: Path) -> list:
    """metrics.jsonl training records without the wall-clock fields."""
    timing = {"stage_seconds", "tokens_per_s"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timing} for r in records if "loss" in r]


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "hf" / "model.safetensors"))


def test_killed_servers_are_restarted_resynced_and_the_step_retried(engine_models, student_server,
                                                                    teacher_server, tmp_path):
    code, text = _run(tmp_path, engine_models, "uninterrupted", f"engines.student.urls=[{student_server.url}]",
                      f"engines.teacher.urls=[{teacher_server.url}]")
    restore_student(engine_models, student_server)
    assert code == 0, text[-3000:]
    code, text = _run(tmp_path, engine_models, "server-killed", "engines.base_port=31700",
                      faults="student@2,teacher@4")
    assert code == 0, text[-3000:]
    assert "restarted student server http://127.0.0.1:31700" in text
    assert "restarted teacher server" in text
    run = tmp_path / "runs/server-killed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == NUM_STEPS
    assert summary["num_server_restarts"] == 2
    killed, ref = _train_records(run), _train_records(tmp_path / "runs/uninterrupted")
    assert [r["step"] for r in killed] == list(range(1, NUM_STEPS + 1))  # each step once, none lost
    assert killed == ref
    a, b = _weights(tmp_path / "runs/uninterrupted"), _weights(run)
    assert a.keys() == b.keys()
    differing = [k for k in a if not bool((a[k] == b[k]).all())]
    assert not differing, f"weights differ: {differing[:5]}"
    # each restarted server's log holds both lives
    logs = run / "logs"
    for role in ("student", "teacher"):
        lines = (logs / f"{role}-0.log").read_text().splitlines()
        assert sum(line.startswith("$ ") for line in lines) == 2, role  # the launcher's command line


def test_a_student_killed_under_an_overlapped_batch_is_restarted_and_the_batch_sampled_again(
        engine_models, teacher_server, tmp_path):
    """rollout.max_staleness=1: the run's own student server dies while step 3's batch is sampled
    beside step 2's training (the teacher is the session's shared one). Off the loop's thread the
    restarted student is not resynced (nothing calls the learner there), so that batch fails its
    weight-version check and the loop samples it again after the push, on the new weights
    (staleness 0). Every step runs once."""
    code, text = _run(tmp_path, engine_models, "overlapped-killed", "engines.base_port=31760",
                      f"engines.teacher.urls=[{teacher_server.url}]", "rollout.max_staleness=1",
                      faults="student@3")
    assert code == 0, text[-3000:]
    assert "restarted student server http://127.0.0.1:31760" in text
    assert "the overlapped batch failed" in text and "sampling it again after the weight push" in text
    records = _train_records(tmp_path / "runs/overlapped-killed")
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    assert [r["staleness_mean"] for r in records] == [0.0, 1.0, 0.0, 1.0, 1.0]
