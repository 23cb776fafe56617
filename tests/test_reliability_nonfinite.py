"""Fault injection (OPD_FAULT_POISON): -inf teacher logprobs at step 2, a NaN loss whose backward
runs at step 3, an inf gradient element at step 4. run.on_nonfinite=skip skips and counts each
step (no update, no push; its metrics line says skipped) and the weights stay finite; NaN teacher
logprobs under run.on_nonfinite=stop exit 1 keeping the last good checkpoint."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.conftest import PYTHON, REPO
from tests.engines_fixtures import restore_student

pytestmark = pytest.mark.slow


def _run(tmp, models, student_server, teacher_server, name, policy, poison):
    cmd = [PYTHON, "-m", "opd_megatron", "run", str(REPO / "recipes/opd-tiny-cpu.yaml"),
           f"student.path={models['student']}", f"teacher.path={models['teacher']}",
           "student.prepare=null", "teacher.prepare=null",
           f"engines.student.urls=[{student_server.url}]", f"engines.teacher.urls=[{teacher_server.url}]",
           "run.num_steps=5", "rollout.prompts_per_step=8", "eval.num_prompts=8", "eval.interval=0",
           "checkpoint.interval=1", "run.quiet=true", f"run.name={name}", f"run.on_nonfinite={policy}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OPD_FAULT_POISON=poison)
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600).returncode
    return code, log.read_text(), json.loads((tmp / "runs" / name / "summary.json").read_text())


def test_nonfinite_teacher_skip_and_stop(engine_models, student_server, teacher_server, tmp_path):
    from safetensors.torch import load_file

    # learner calls count the steps that reach the learner: step 3 is its 2nd call, step 4 its 3rd
    code, text, summary = _run(tmp_path, engine_models, student_server, teacher_server, "nan-skip", "skip",
                               "teacher_inf@2,loss_nan@2,grad_inf@3")
    assert code == 0, text[-3000:]
    assert summary["completed"] and summary["num_skipped_steps"] == 3
    records = [json.loads(line) for line in (tmp_path / "runs/nan-skip/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [2, 3, 4]
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 5] and all(r["grad_norm"] > 0 for r in trained)
    assert [r["num_skipped"] for r in records if r["step"] in (1, 5) and "loss" in r] == [0, 3]
    weights = load_file(str(tmp_path / "runs/nan-skip/hf/model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    code, text, summary = _run(tmp_path, engine_models, student_server, teacher_server, "nan-stop", "stop",
                               "teacher_nan@3")
    assert code == 1, text[-3000:]
    assert "non-finite" in summary["error"] and not summary["completed"]
    ckpts = sorted((tmp_path / "runs/nan-stop/checkpoints").iterdir())
    assert [p.name for p in ckpts][-1] == "step_000002"  # the last good step before the NaN at step 3
    restore_student(engine_models, student_server)
