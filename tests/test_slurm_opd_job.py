"""`sbatch slurm/opd_qwen3.sh run.rehearse=true` on the local three-node cluster: the TML recipe
rehearsed (opd_megatron/run/rehearse.py) with its data as a `save_to_disk` copy, real SGLang
servers and the real Megatron learner, its three roles one per node, preempted twice:

- after step 2 by the rehearsal itself (the learner checkpoints and exits 3 as a preempted run
  does; the job requeues itself and resumes on fresh servers);
- during step 3 by Slurm's own preemption signal (`scancel --batch --signal=USR1`, what
  `--signal=B:USR1@<cluster.signal_s>` sends): opd.sbatch forwards it to the four torchrun
  workers only, they checkpoint after the step and exit 3, the job requeues again and finishes.

Each step is logged once across the three job instances (metrics.jsonl rewinds on resume). That a
resume on fresh servers is bit-identical to an uninterrupted run is shown without Slurm
(tests/test_reliability_kill_resume.py, tests/test_reliability_server_restart.py).

    flock /tmp/opd-heavy.lock .venv/bin/pytest -q tests/test_slurm_opd_job.py   (~5 min on 2 cores)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_fixtures import job_info, sbatch, slurm_cluster, wait_for_job  # noqa: F401

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 900
BASE_PORT = 28600  # below the ephemeral range (32768+: connections take those); the fake nodes share this host
TML = "recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml"


def read_log(run_dir: Path, pattern: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").glob(pattern)))


@pytest.fixture(scope="module")
def job_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-opd")


LIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED")


def test_sbatch_rehearsal_of_the_tml_recipe_on_three_nodes_survives_two_preemptions(slurm_cluster, job_root):
    root = job_root / "rehearsal"
    root.mkdir()
    args = ["--nodes=3", "--gpus-per-node=0", "--time=30", f"--output={root}/rehearsal-%j.out",
            "slurm/opd_qwen3.sh", "run.rehearse=true", f"run.output_dir={root}/runs", "run.quiet=true",
            "data.source=disk", "data.path=assets/data/math-tiny/train_disk", f"engines.base_port={BASE_PORT}"]
    extra = {"RECIPE": TML, "OPD_PYTHON": sys.executable, "OPD_MODEL_DIR": str(root / "no-models")}
    job_id, proc = sbatch(slurm_cluster, args, wait=False, extra_env=extra)
    assert proc.returncode == 0, proc.stderr
    run_dir = root / "runs" / "opd-qwen3-8b-to-8b-base-rehearsal"

    def output() -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(root.glob("rehearsal-*.out")))

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while "resumed from" not in read_log(run_dir, "slurm-learner-*.r1.log"):  # the first requeue resumed
        assert time.monotonic() < deadline, f"no resume after {JOB_TIMEOUT_S} s: {job_info(slurm_cluster, job_id)}"
        # alive: running, or on its way back through a requeue (COMPLETING, REQUEUED, then PENDING)
        assert job_info(slurm_cluster, job_id).get("JobState") in LIVE_STATES, output()[-4000:]
        time.sleep(0.5)
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job_id)], env=slurm_cluster, check=True)
    info = wait_for_job(slurm_cluster, job_id, JOB_TIMEOUT_S)
    out = output()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-4000:] + read_log(
        run_dir, "slurm-learner-*")[-4000:]
    assert info["Restarts"] == "2" and info["NodeList"] == "n[1-3]", info
    assert "[rehearse] parallel.dp: 4 -> 2" in out and out.count("preempted: checkpoint written; requeueing") == 2
    learner_node = re.search(r"\[learner\.sh\] node (n\d): 4 process\(es\)", read_log(run_dir, "slurm-learner-*.r0.log"))
    student_node = re.search(r"student server 0 on (n\d)", read_log(run_dir, "slurm-student-0.r0.log"))
    teacher_node = re.search(r"teacher server 0 on (n\d)", read_log(run_dir, "slurm-teacher-0.r0.log"))
    assert learner_node and student_node and teacher_node, out[-3000:]
    assert {learner_node[1], student_node[1], teacher_node[1]} == {"n1", "n2", "n3"}  # one role per node
    assert "got SIGUSR1: forwarding to the learner" in out
    assert "(step 3)" in read_log(run_dir, "slurm-learner-*.r2.log").split("resumed from")[-1].splitlines()[0]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # each step once across three instances
    assert records[-1].get("final") and "aime24_avg_at_k" in records[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 4
    config = (run_dir / "config.yaml").read_text()
    assert "source: disk" in config and "weight_sync: distributed" in config and "rehearse: true" in config
    assert (run_dir / "report.md").is_file()
    # the job's API key: owner-only, in the run directory, and nowhere else that is written
    key_file = run_dir / "api-key"
    assert key_file.stat().st_mode & 0o077 == 0
    key = key_file.read_text().strip()
    written = [p for p in (*run_dir.rglob("*"), *root.glob("*.out")) if p.is_file() and p != key_file]
    assert len(key) >= 32 and not [str(p) for p in written if key.encode() in p.read_bytes()]


def test_bad_override_fails_the_job_with_exit_2_before_any_server_starts(slurm_cluster, job_root):
    args = ["--nodes=2", "--gpus-per-node=0", "--time=5", f"--output={job_root}/bad-%j.out", "slurm/opd_qwen3.sh",
            f"run.output_dir={job_root}/runs", "run.name=bad", "cluster.num_nodes=2", "cluster.teacher_nodes=1",
            f"engines.base_port={BASE_PORT}", "rollout.temperature=-1"]
    job_id, proc = sbatch(slurm_cluster, args, wait=True, timeout_s=120,
                          extra_env={"RECIPE": "recipes/opd-tiny-cpu.yaml", "OPD_PYTHON": sys.executable})
    assert proc.returncode == 2
    assert "rollout.temperature" in "".join(p.read_text() for p in job_root.glob("bad-*.out"))
    assert not (job_root / "runs" / "bad").exists()
