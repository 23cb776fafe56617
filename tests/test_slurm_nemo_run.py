"""NeMo-Run as the optional second way to submit (launch/nemo_run_submit.py), on the local
cluster. nemo-run lives in its own venv (it moves packages SGLang pins), named by
OPD_NEMO_PYTHON; without it the test is skipped.

    python3.11 -m venv /tmp/nemo && /tmp/nemo/bin/pip install -r requirements/nemo-run.txt
    OPD_NEMO_PYTHON=/tmp/nemo/bin/python flock /tmp/opd-heavy.lock .venv/bin/pytest -q tests/test_slurm_nemo_run.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.slurm_fixtures import REPO, slurm_cluster  # noqa: F401

NEMO_PYTHON = os.environ.get("OPD_NEMO_PYTHON", "")


@pytest.mark.skipif(not NEMO_PYTHON, reason="OPD_NEMO_PYTHON unset: no venv with requirements/nemo-run.txt")
def test_nemo_run_submits_opd_sbatch_and_propagates_a_bad_input_exit(slurm_cluster, tmp_path):
    """A bad override must come back as exit 2 through NeMo-Run's batch script and its srun."""
    cmd = [NEMO_PYTHON, "launch/nemo_run_submit.py", "--recipe", "recipes/opd-tiny-cpu.yaml", "--nodes", "2",
           "--gpus-per-node", "0", "--time", "00:05:00", "--wait", f"run.output_dir={tmp_path}",
           "cluster.num_nodes=2", "cluster.teacher_nodes=1", "rollout.temperature=-1"]
    env = dict(slurm_cluster, OPD_PYTHON=sys.executable, NEMORUN_HOME=str(tmp_path / "nemo"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "submitted opd-opd-tiny-cpu as Slurm job" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "nemo").rglob("log-*.out"))
    assert "rollout.temperature" in logs, logs
