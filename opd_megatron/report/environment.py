"""Where a run ran: git sha + dirty flag, package versions, hardware, Slurm job.

``write_environment`` saves ``collect_environment()`` as RUN_DIR/environment.json at run
start; the report states it (or collects it when the report is written, and says so).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from opd_megatron.report.inputs import read_json

PACKAGES = ("torch", "megatron-core", "sglang", "transformers", "omegaconf", "datasets",
            "math-verify")
VERSIONS_FILE = Path("/opt/opd/versions.json")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(args: List[str], cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _hardware() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    ram_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpus: List[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch or a broken driver: report no GPUs rather than fail
        pass
    return {"cpu": cpu, "num_cpu_cores": os.cpu_count(), "ram_gib": ram_gib, "gpus": gpus,
            "hostname": platform.node(), "python": platform.python_version()}


def collect_environment() -> Dict[str, Any]:
    """Git sha + dirty flag, package versions, hardware, Slurm job: call at run start and
    save with ``write_environment`` so the report states where the run ran."""
    sha = _git(["rev-parse", "HEAD"], REPO_ROOT)
    status = _git(["status", "--porcelain", "--untracked-files=no"], REPO_ROOT)
    slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST",
                                        "SLURM_NNODES", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
             if k in os.environ}
    versions_file = read_json(VERSIONS_FILE) if VERSIONS_FILE.is_file() else None
    return {"git_sha": sha, "git_dirty": bool(status) if status is not None else None,
            "versions": _versions(), "image_versions": versions_file, "hardware": _hardware(),
            "slurm": slurm, "argv": sys.argv}


def write_environment(run_dir: Path) -> Dict[str, Any]:
    """Save ``collect_environment()`` as RUN_DIR/environment.json; returns it."""
    env = collect_environment()
    (Path(run_dir) / "environment.json").write_text(json.dumps(env, indent=2, sort_keys=True))
    return env
