"""`opd run` end to end through real SGLang servers (CPU) and the real Megatron-Core learner:
3-step opd, sft and rl runs, the output contract, and same seed -> same metrics.

The servers are the session's shared tiny student/teacher servers (tests/engines_fixtures.py),
passed in with engines.<role>.urls exactly as the sbatch script does; each run first pushes its
own initial weights to the student server, and the module restores the server's weights after.
A run under torchrun whose rank 0 launches its own servers is tests/test_rehearse.py's (tp 2 x
dp 2, four processes).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, assert_same_run, untimed
from tests.engines_fixtures import restore_student

pytestmark = pytest.mark.slow


def _run(tmp: Path, models, student_server, teacher_server, *overrides: str, recipe="opd-tiny-cpu.yaml",
         env_extra=None, returncode: int = 0):
    args = [PYTHON, "-m", "opd_megatron", "run", str(REPO / "recipes" / recipe),
            f"student.path={models['student']}", f"teacher.path={models['teacher']}",
            "student.prepare=null", "teacher.prepare=null",
            f"engines.student.urls=[{student_server.url}]", f"engines.teacher.urls=[{teacher_server.url}]",
            "run.num_steps=3", "rollout.prompts_per_step=8", "eval.num_prompts=16", "run.quiet=true",
            "checkpoint.interval=2", *overrides]
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    # Output goes to a file, not a pipe: torch's shared-memory manager (tensor weight sync) can
    # outlive the run while the shared test servers hold its tensors, and would keep a pipe open.
    log = tmp / f"{overrides[0].split('=', 1)[1] if overrides else 'run'}.log"
    with log.open("a") as out:
        proc = subprocess.run(args, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, timeout=600, env=env)
    text = log.read_text()
    assert proc.returncode == returncode, text[-4000:]
    return text


def _records(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def loop_env(engine_models, student_server, teacher_server, tmp_path_factory):
    yield engine_models, student_server, teacher_server, tmp_path_factory.mktemp("loop")
    restore_student(engine_models, student_server)


OPD_EXTRA = ["eval.benchmarks=[arithmetic]"]


@pytest.fixture(scope="module")
def opd_output(loop_env) -> str:
    """The opd run: checked below, and the first of the same-seed pair."""
    models, student, teacher, tmp = loop_env
    return _run(tmp, models, student, teacher, "run.name=opd", *OPD_EXTRA)


@pytest.mark.parametrize("name,recipe,extra", [
    ("opd", "opd-tiny-cpu.yaml", OPD_EXTRA),
    ("sft", "sft-tiny-cpu.yaml", []),
    ("rl", "rl-tiny-cpu.yaml", ["rollout.prompts_per_step=2", "rollout.samples_per_prompt=4"]),
    ("opd-megatron-teacher", "opd-tiny-cpu.yaml", ["objective.teacher_backend=megatron"]),
])
def test_methods_run_end_to_end(loop_env, request, name, recipe, extra):
    models, student, teacher, tmp = loop_env
    output = (request.getfixturevalue("opd_output") if name == "opd"
              else _run(tmp, models, student, teacher, f"run.name={name}", *extra, recipe=recipe))
    run_dir = tmp / "runs" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["steps"] == 3
    for key in ("teacher_accuracy", "student_accuracy_before", "student_accuracy_after",
                "reverse_kl_before", "reverse_kl_after", "flops", "stage_seconds"):
        if key == "teacher_accuracy" and name == "opd-megatron-teacher":
            continue  # no teacher server to sample from: the teacher only scores, inside Megatron
        assert summary[key] is not None, key
    assert "student accuracy" in output  # the end-of-run table
    recs = _records(run_dir)
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(abs(r["loss"]) < 1e3 for r in train)
    for f in ("config.yaml", "report.md", "hf/config.json", "hf/model.safetensors", "environment.json"):
        assert (run_dir / f).is_file(), f
    assert list((run_dir / "tensorboard").iterdir())
    assert (run_dir / "checkpoints").is_dir()
    flops = summary["flops"]
    if name == "sft":
        assert flops["teacher_sampling"] > 0 and flops["student_sampling"] == 0
    else:
        assert flops["student_sampling"] > 0 and flops["learner_train"] > 0
    if name == "opd-megatron-teacher":
        assert flops["teacher_scoring"] > 0 and all(r["kl_loss"] > 0 for r in train)
    if name == "opd":
        assert flops["teacher_scoring"] > 0
        # SGLang's sampler logprobs (fp32 server) vs the Megatron learner's recompute on the
        # same weights: |logp_sampler - logp_learner| per response token, fp32 both sides.
        assert all(r["mismatch_abs"] < 1e-4 for r in train), [r["mismatch_abs"] for r in train]
        evals = [r for r in recs if "accuracy" in r]  # eval.benchmarks ran at the first and last eval
        assert len(evals) == 2 and all(0.0 <= r["arithmetic_avg_at_k"] <= 1.0 for r in evals)
    if name == "rl":
        assert "reward_mean" in train[0] and flops["teacher_scoring"] == 0


def test_same_seed_same_metrics(loop_env, opd_output):
    models, student, teacher, tmp = loop_env
    _run(tmp, models, student, teacher, "run.name=again", *OPD_EXTRA)  # the opd run's command again
    runs = [untimed(_records(tmp / "runs" / name)) for name in ("opd", "again")]
    assert runs[0] == runs[1]
    from safetensors.torch import load_file

    a = load_file(str(tmp / "runs/opd/hf/model.safetensors"))
    b = load_file(str(tmp / "runs/again/hf/model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_each_rollout_streamed_to_the_teacher_is_deterministic_and_the_synchronous_run(loop_env, opd_output):
    """rollout.stream_chunks=1: the opd run with each rollout scored as soon as it finishes, alone
    on the teacher (cache flushed), while the rest are still sampled. Twice: the same records and
    weights bit for bit, whatever order the rollouts arrived in. Against the synchronous run: the
    same run, every float to 1e-5 (CPU SGLang's teacher scores move in the last bits with the
    batch they are computed in: one rollout alone vs the step's eight). And with two teacher URLs."""
    models, student, teacher, tmp = loop_env
    for name in ("streamed", "streamed-again"):
        _run(tmp, models, student, teacher, f"run.name={name}", *OPD_EXTRA, "rollout.stream_chunks=1")
    runs = {name: untimed(_records(tmp / "runs" / name)) for name in ("opd", "streamed", "streamed-again")}
    assert runs["streamed"] == runs["streamed-again"]
    w = [_weights(tmp / "runs" / name) for name in ("streamed", "streamed-again")]
    assert w[0].keys() == w[1].keys() and all((w[0][k] == w[1][k]).all() for k in w[0])
    assert_same_run(runs["streamed"], runs["opd"], tol=1e-5)
    # Two teacher request URLs (here the same server twice): a scoring loop per URL, both
    # draining one queue of finished rollouts until sampling ends; the same run to 1e-5.
    _run(tmp, models, student, teacher, "run.name=streamed-two", *OPD_EXTRA, "rollout.stream_chunks=1",
         f"engines.teacher.urls=[{teacher.url},{teacher.url}]")
    assert_same_run(untimed(_records(tmp / "runs/streamed-two")), runs["opd"], tol=1e-5)
    stages = [r["stage_seconds"] for r in _records(tmp / "runs/streamed") if "loss" in r]
    assert all({"rollout", "overlap:student_busy", "overlap:teacher_busy"} <= set(s) and "teacher_score" not in s
               for s in stages), stages


# rollout.max_staleness=2 (step n+2 sampled and scored while step n trains), stream_chunks=2
# (each half of a step's prompts scored as soon as it is sampled), kl_at=learner (the reverse KL
# of the stale rollouts at the learner's own logprobs, the sampled-token estimator of the TML
# recipe), over 4 steps with a checkpoint at 2.
PIPELINED = ["run.num_steps=4", "rollout.max_staleness=2", "rollout.stream_chunks=2",
             "objective.kl_estimator=sampled_token", "objective.kl_at=learner"]


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "hf/model.safetensors"))


def test_pipelined_steps_are_stale_by_k_deterministic_and_resume_bit_exact(loop_env):
    """The same run twice: straight, and SIGKILLed right after step 3's line and resumed. The
    checkpoint at step 2 holds the batches of steps 3 and 4 (sampled by versions 0 and 1 while
    steps 1 and 2 trained), which the rerun trains on as they are; the second process redoes
    steps 1-2 from nothing and the rest from the checkpoint, so equal results show both the same
    seed giving the same run and the resume being exact."""
    models, student, teacher, tmp = loop_env
    _run(tmp, models, student, teacher, "run.name=pipe", *PIPELINED)
    _run(tmp, models, student, teacher, "run.name=pipe-killed", *PIPELINED,
         env_extra={"OPD_FAULT_KILL_AFTER_LOG": "3"}, returncode=-9)
    _run(tmp, models, student, teacher, "run.name=pipe-killed", *PIPELINED)
    runs = {name: untimed(_records(tmp / "runs" / name)) for name in ("pipe", "pipe-killed")}
    assert runs["pipe"] == runs["pipe-killed"]
    w = {name: _weights(tmp / "runs" / name) for name in runs}
    assert all(w["pipe"].keys() == w[n].keys() and all((w["pipe"][k] == w[n][k]).all() for k in w[n]) for n in w)
    train = [r for r in _records(tmp / "runs/pipe") if "loss" in r]
    # steps 1-2 sample their own batch with the weights they train; steps 3-4 train on batches
    # sampled two versions back, and the learner's logprobs of them differ from the sampler's by
    # far more than the on-policy 1e-4
    assert [r["staleness_mean"] for r in train] == [0.0, 0.0, 2.0, 2.0]
    assert max(r["mismatch_abs"] for r in train[:2]) < 1e-4 < min(r["mismatch_abs"] for r in train[2:])
    stages = [set(r["stage_seconds"]) for r in train]
    assert all({"overlap:rollout", "overlap:student_busy", "overlap:teacher_busy", "wait_rollout",
                "learner_logprobs"} <= s for s in stages[:2])
    assert all("overlap:rollout" not in s for s in stages[2:])  # no step 5 or 6 to sample ahead for
    assert "ran beside the loop" in (tmp / "runs/pipe/report.md").read_text()


PREFETCH = ["run.num_steps=4", "rollout.offpolicy_prefetch_steps=3", "engines.max_concurrency=24"]


def test_sft_teacher_data_prefetched_resumes_bit_exact(loop_env):
    """sft drawing three steps of teacher data per engine call (steps 1-3, then 4-6): straight,
    and SIGKILLed after step 3's line and resumed from the step-2 checkpoint, which holds step 3's
    batch drawn at step 1: the same records and weights. The other process redoes steps 1-2 from
    nothing, so equal results show the same seed giving the same run and the resume being exact.
    And a run to 2 steps is the first 2 steps of the 4-step one (a constant lr: what makes one
    SFT ladder run its curve at every data size, recipes/tiny/sft-ladder.yaml)."""
    models, student, teacher, tmp = loop_env
    _run(tmp, models, student, teacher, "run.name=prefetch", *PREFETCH, recipe="sft-tiny-cpu.yaml")
    _run(tmp, models, student, teacher, "run.name=prefetch-killed", *PREFETCH, recipe="sft-tiny-cpu.yaml",
         env_extra={"OPD_FAULT_KILL_AFTER_LOG": "3"}, returncode=-9)
    _run(tmp, models, student, teacher, "run.name=prefetch-killed", *PREFETCH, recipe="sft-tiny-cpu.yaml")
    runs = {name: untimed(_records(tmp / "runs" / name)) for name in ("prefetch", "prefetch-killed")}
    assert runs["prefetch"] == runs["prefetch-killed"]
    w = {name: _weights(tmp / "runs" / name) for name in runs}
    assert all((w["prefetch"][k] == w["prefetch-killed"][k]).all() for k in w["prefetch"])
    train = [r for r in _records(tmp / "runs/prefetch") if "loss" in r]
    assert [s["step"] for s in train if "rollout" in s["stage_seconds"]] == [1, 4]  # one call per 3 steps
    _run(tmp, models, student, teacher, "run.name=prefetch-short", *PREFETCH, "run.num_steps=2",
         recipe="sft-tiny-cpu.yaml")
    short = untimed(_records(tmp / "runs/prefetch-short"))
    assert [r for r in short if "loss" in r] == [r for r in runs["prefetch"] if "loss" in r][:2]
    assert all(r["num_tokens"] > 0 for r in train)
    flops = [r["flops"]["teacher_sampling"] for r in train]
    assert all(b > a for a, b in zip([0.0] + flops, flops))  # counted per step trained, not per call


def test_a_run_stops_at_its_target_accuracy(loop_env):
    """eval.stop_at_accuracy: the run ends at the first eval that reaches it, as a finished run
    (summary, final checkpoint, export); its final record is that eval."""
    models, student, teacher, tmp = loop_env
    _run(tmp, models, student, teacher, "run.name=stop", f"student.path={REPO / 'assets/tiny/student-init'}",
         "run.num_steps=5", "eval.interval=1", "eval.stop_at_accuracy=0.05", recipe="sft-tiny-cpu.yaml")
    run_dir = tmp / "runs/stop"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["steps"] == 1
    records = _records(run_dir)
    evals = [r for r in records if "accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 1] and evals[1]["accuracy"] >= 0.05
    assert evals[2]["final"] and evals[2]["accuracy"] == evals[1]["accuracy"] == summary["student_accuracy_after"]
    assert (run_dir / "hf/model.safetensors").is_file() and (run_dir / "checkpoints/step_000001").is_dir()
