"""A real three-node Slurm cluster for the tests (launch/local_slurm.sh up 3), and job helpers.

The cluster gets its own directory and ports (not the default /tmp/opd-slurm of a developer's
`launch/local_slurm.sh up`), is started once per session and always brought down.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.conftest import cannot_run

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "launch" / "local_slurm.sh"
TEST_SLURM_DIR = "/tmp/opd-slurm-pytest"
TEST_SLURM_PORT = "16917"
NUM_NODES = 3
"""n1, n2, n3: the Qwen3 recipes' three roles (learner, student servers, teacher servers) one per node."""


def _script_env() -> Dict[str, str]:
    return dict(os.environ, OPD_SLURM_DIR=TEST_SLURM_DIR, OPD_SLURM_PORT=TEST_SLURM_PORT)


def local_slurm(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SLURM), *args], env=_script_env(), capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture(scope="session")
def slurm_cluster() -> Dict[str, str]:
    """Environment (SLURM_CONF) of a running three-node cluster n1, n2, n3; torn down at the end."""
    if os.geteuid() != 0:
        cannot_run("launch/local_slurm.sh needs root (slurmd, munged, apt-get); run the Slurm tests as root")
    up = local_slurm("up", str(NUM_NODES))
    try:
        assert up.returncode == 0, f"local_slurm.sh up failed:\n{up.stdout}\n{up.stderr}"
        env = dict(os.environ, SLURM_CONF=f"{TEST_SLURM_DIR}/slurm.conf")
        yield env
    finally:
        down = local_slurm("down", timeout_s=120)
        assert down.returncode == 0, down.stderr


def sbatch(env: Dict[str, str], args: List[str], *, wait: bool, timeout_s: float = 600,
           extra_env: Optional[Dict[str, str]] = None) -> tuple[int, subprocess.CompletedProcess]:
    """Submit from the repo root; returns (job id, completed sbatch)."""
    cmd = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + args
    proc = subprocess.run(cmd, cwd=REPO, env=dict(env, **(extra_env or {})), capture_output=True, text=True,
                          timeout=timeout_s)
    match = re.match(r"(\d+)", proc.stdout.strip())
    assert match, f"sbatch printed no job id: {proc.stdout!r} {proc.stderr!r}"
    return int(match.group(1)), proc


def job_info(env: Dict[str, str], job_id: int) -> Dict[str, str]:
    """scontrol's Key=Value fields of a job (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for_job(env: Dict[str, str], job_id: int, timeout_s: float) -> Dict[str, str]:
    """Poll until the job is in a final state (requeues pass through PENDING, not final)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job_info(env, job_id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(2)
    subprocess.run(["scancel", str(job_id)], env=env)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {job_info(env, job_id)}")
