"""NeMo-Run as the optional second way to submit (launch/nemo_run_submit.py), on the local
cluster. nemo-run lives in its own venv (it moves packages SGLang pins): OPD_NEMO_PYTHON names
one, else the test makes it once (/tmp/opd-nemo-venv-<hash of requirements/nemo-run.txt>, kept
for the next session); a venv that cannot be made is a failure in CI, a skip elsewhere.

    flock /tmp/opd-heavy.lock .venv/bin/pytest -q tests/test_slurm_nemo_run.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cannot_run
from tests.slurm_fixtures import REPO, slurm_cluster  # noqa: F401

REQUIREMENTS = REPO / "requirements" / "nemo-run.txt"


@pytest.fixture(scope="session")
def nemo_python() -> str:
    if os.environ.get("OPD_NEMO_PYTHON"):
        return os.environ["OPD_NEMO_PYTHON"]
    venv = Path(f"/tmp/opd-nemo-venv-{hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]}")
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)  # ours: a half-made venv of an interrupted session
        for cmd in (["python3.11", "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                cannot_run(f"could not make the NeMo-Run venv ({' '.join(cmd[:3])}): {proc.stderr.strip()[-300:]}")
        (venv / ".complete").touch()
    return str(python)


def test_nemo_run_submits_opd_sbatch_and_propagates_a_bad_input_exit(slurm_cluster, nemo_python, tmp_path):
    """A bad override must come back as exit 2 through NeMo-Run's batch script and its srun."""
    cmd = [nemo_python, "launch/nemo_run_submit.py", "--recipe", "recipes/opd-tiny-cpu.yaml", "--nodes", "2",
           "--gpus-per-node", "0", "--time", "00:05:00", "--wait", f"run.output_dir={tmp_path}",
           "cluster.num_nodes=2", "cluster.teacher_nodes=1", "rollout.temperature=-1"]
    env = dict(slurm_cluster, OPD_PYTHON=sys.executable, NEMORUN_HOME=str(tmp_path / "nemo"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "submitted opd-opd-tiny-cpu as Slurm job" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "nemo").rglob("log-*.out"))
    assert "rollout.temperature" in logs, logs
