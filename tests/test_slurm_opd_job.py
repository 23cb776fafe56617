"""`sbatch --wait slurm/opd_qwen3.sh` on the local two-node cluster with the tiny CPU recipe:
teacher server on n1, student server and learner on n2, real SGLang and Megatron; and
preemption: USR1 mid-run -> checkpoint -> requeue -> resume -> the same final weights.

    flock /tmp/opd-heavy.lock .venv/bin/pytest -q tests/test_slurm_opd_job.py   (~5 min on 2 cores)

The models are random tiny checkpoints (``tiny-random:*`` prepare) so no SFT run is needed;
the runs are shortened by overrides; everything else is recipes/opd-tiny-cpu.yaml.

The runs sample at the recipe's temperature: the student servers sample with the per-request
seed (shims/sgl_kernel on CPU), and the teacher's prefix cache is flushed before each call
(engines.flush_teacher_cache), so the requeued job's fresh servers give the same samples and
the same scores bit for bit, and the final weights must be equal: that tests checkpoint,
requeue, restore (model, optimizer, RNG, data cursor) and re-sync of the restarted student.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.slurm_fixtures import REPO, job_info, sbatch, slurm_cluster, wait_for_job  # noqa: F401

pytestmark = pytest.mark.slow

NUM_STEPS = 4
JOB_TIMEOUT_S = 900
BASE_PORT = 34600  # away from the engines tests' ports; both fake nodes share this host


def job_overrides(root: Path, name: str) -> List[str]:
    return [f"run.output_dir={root}/runs", f"run.name={name}", "run.quiet=true",
            "cluster.num_nodes=2", "cluster.teacher_nodes=1",
            f"student.path={root}/models/student", "student.prepare=tiny-random:student",
            f"teacher.path={root}/models/teacher", "teacher.prepare=tiny-random:teacher",
            f"run.num_steps={NUM_STEPS}", "rollout.prompts_per_step=8", "eval.num_prompts=8",
            "eval.interval=0", "checkpoint.interval=0", "report.plots=false", f"engines.base_port={BASE_PORT}"]


def submit(env: Dict[str, str], root: Path, name: str, *, wait: bool):
    args = ["--nodes=2", "--gpus-per-node=0", "--time=30", f"--output={root}/{name}-%j.out",
            "slurm/opd_qwen3.sh", *job_overrides(root, name)]
    extra = {"RECIPE": "recipes/opd-tiny-cpu.yaml", "OPD_PYTHON": sys.executable}
    return sbatch(env, args, wait=wait, timeout_s=JOB_TIMEOUT_S, extra_env=extra)


def job_output(root: Path, name: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.glob(f"{name}-*.out")))


def read_log(run_dir: Path, pattern: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").glob(pattern)))


def final_weights(run_dir: Path) -> Dict[str, object]:
    from safetensors.torch import load_file

    files = sorted((run_dir / "hf").glob("*.safetensors"))
    assert files, f"no exported weights in {run_dir / 'hf'}"
    out: Dict[str, object] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def job_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-opd")


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, job_root) -> Dict[str, object]:
    job_id, proc = submit(slurm_cluster, job_root, "straight", wait=True)
    return {"job_id": job_id, "rc": proc.returncode, "stderr": proc.stderr,
            "run_dir": job_root / "runs" / "straight"}


def test_sbatch_wait_runs_the_tiny_recipe_across_two_nodes(uninterrupted, job_root):
    run_dir: Path = uninterrupted["run_dir"]
    assert uninterrupted["rc"] == 0, job_output(job_root, "straight") + read_log(run_dir, "slurm-learner-*")[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["steps"] == NUM_STEPS
    assert (run_dir / "report.md").is_file() and "opd" in (run_dir / "report.md").read_text().lower()
    assert "teacher server 0 on n1" in read_log(run_dir, "slurm-teacher-0.r0.log")
    assert "student server 0 on n2" in read_log(run_dir, "slurm-student-0.r0.log")
    assert "[learner.sh] node n2: 1 process(es)" in read_log(run_dir, "slurm-learner-*.r0.log")
    config = (run_dir / "config.yaml").read_text()
    assert f"http://n1:{BASE_PORT + 2}" in config and f"http://n2:{BASE_PORT}" in config  # external servers used


def test_preempted_job_requeues_resumes_and_matches_the_uninterrupted_run(slurm_cluster, job_root, uninterrupted):
    assert uninterrupted["rc"] == 0, "the uninterrupted reference run failed (see the test above)"
    job_id, proc = submit(slurm_cluster, job_root, "preempted", wait=False)
    assert proc.returncode == 0, proc.stderr
    run_dir = job_root / "runs" / "preempted"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not _steps_done(run_dir):  # first training step logged: now it is mid-run
        assert time.monotonic() < deadline, f"no training step after {JOB_TIMEOUT_S} s: {job_info(slurm_cluster, job_id)}"
        assert job_info(slurm_cluster, job_id).get("JobState") in ("PENDING", "RUNNING"), job_output(job_root, "preempted")
        time.sleep(0.5)
    # What Slurm does at --signal=B:USR1@<cluster.signal_s>: USR1 to the batch shell only.
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job_id)], env=slurm_cluster, check=True)
    info = wait_for_job(slurm_cluster, job_id, JOB_TIMEOUT_S)
    out = job_output(job_root, "preempted")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out
    assert info["Restarts"] == "1", out
    assert "preempted: checkpoint written; requeueing" in out
    first, second = read_log(run_dir, "slurm-learner-*.r0.log"), read_log(run_dir, "slurm-learner-*.r1.log")
    assert "signal 10" in first, first[-2000:]
    assert "resumed from" in second, second[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["completed"] is True
    straight, resumed = final_weights(uninterrupted["run_dir"]), final_weights(run_dir)
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not bool((straight[k] == resumed[k]).all())]
    assert not differing, f"weights differ after resume: {differing[:5]}"


def _steps_done(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return False
    return any(json.loads(line).get("step", 0) >= 1 for line in metrics.read_text().splitlines() if line.strip())


def test_bad_override_fails_the_job_with_exit_2_before_any_server_starts(slurm_cluster, job_root):
    args = ["--nodes=2", "--gpus-per-node=0", "--time=5", f"--output={job_root}/bad-%j.out", "slurm/opd_qwen3.sh",
            *job_overrides(job_root, "bad"), "rollout.temperature=-1"]
    job_id, proc = sbatch(slurm_cluster, args, wait=True, timeout_s=120,
                          extra_env={"RECIPE": "recipes/opd-tiny-cpu.yaml", "OPD_PYTHON": sys.executable})
    assert proc.returncode == 2
    assert "rollout.temperature" in job_output(job_root, "bad")
    assert not (job_root / "runs" / "bad").exists()



REHEARSAL_PORT = 34700
TML = "recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml"


def test_sbatch_rehearsal_of_the_tml_recipe_places_three_roles_on_three_nodes(slurm_cluster, job_root):
    """`sbatch --wait slurm/opd_qwen3.sh run.rehearse=true` with the TML recipe and its data as a
    `save_to_disk` copy: the learner, student servers and teacher servers each on their own node
    of three, the learner at tp 2 x dp 2 (4 processes), the distributed weight sync, the stop after
    step 2 as a preemption resumed by the job's own requeue, the benchmarks and the report."""
    root = job_root / "rehearsal"
    root.mkdir()
    args = ["--nodes=3", "--gpus-per-node=0", "--time=30", f"--output={root}/rehearsal-%j.out",
            "slurm/opd_qwen3.sh", "run.rehearse=true", f"run.output_dir={root}/runs", "run.quiet=true",
            "data.source=disk", "data.path=assets/data/math-tiny/train_disk", f"engines.base_port={REHEARSAL_PORT}"]
    extra = {"RECIPE": TML, "OPD_PYTHON": sys.executable, "OPD_MODEL_DIR": str(root / "no-models")}
    job_id, proc = sbatch(slurm_cluster, args, wait=True, timeout_s=JOB_TIMEOUT_S, extra_env=extra)
    out = "\n".join(p.read_text(errors="replace") for p in sorted(root.glob("rehearsal-*.out")))
    runs = sorted((root / "runs").glob("*")) if (root / "runs").is_dir() else []
    assert len(runs) == 1, f"{runs}\n{out[-4000:]}"
    run_dir = runs[0]
    assert proc.returncode == 0, out[-4000:] + read_log(run_dir, "slurm-learner-*")[-4000:]
    info = job_info(slurm_cluster, job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", info
    assert info["NodeList"] == "n[1-3]", info
    assert "[rehearse] parallel.dp: 4 -> 2" in out and "preempted: checkpoint written; requeueing" in out
    learner_node = re.search(r"\[learner\.sh\] node (n\d): 4 process\(es\)", read_log(run_dir, "slurm-learner-*.r0.log"))
    student_node = re.search(r"student server 0 on (n\d)", read_log(run_dir, "slurm-student-0.r0.log"))
    teacher_node = re.search(r"teacher server 0 on (n\d)", read_log(run_dir, "slurm-teacher-0.r0.log"))
    assert learner_node and student_node and teacher_node, out[-3000:]
    assert {learner_node[1], student_node[1], teacher_node[1]} == {"n1", "n2", "n3"}  # one role per node
    assert "resumed from" in read_log(run_dir, "slurm-learner-*.r1.log")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # each step once across the requeue
    assert records[-1].get("final") and "aime24_avg_at_k" in records[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 4
    config = (run_dir / "config.yaml").read_text()
    assert "source: disk" in config and "weight_sync: distributed" in config and "rehearse: true" in config
    assert (run_dir / "report.md").is_file()
