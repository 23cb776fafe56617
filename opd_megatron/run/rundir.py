"""The run directory: refuse to mix runs, find the checkpoint to resume from.

``runs/<name>/config.yaml`` is the fully resolved config (``opd run runs/<name>/config.yaml``
reruns it). A second ``opd run`` with the same training settings resumes from the latest
checkpoint; one with different settings is refused unless ``run.overwrite=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from opd_megatron.config import config_dict, to_yaml
from opd_megatron.config.schema import Config
from opd_megatron.errors import EXIT_PREEMPTED, ConfigError, RuntimeFailure

# Settings that say where/how a run executes, not what it trains: they may differ on resume.
EXECUTION_KEYS = {"engines", "cluster", "report"}
RUN_EXECUTION_KEYS = {"quiet", "log_interval", "overwrite", "num_steps", "output_dir"}  # a moved run dir resumes
CHECKPOINT_PREFIX = "step_"


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def _identity(d: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in d.items() if k not in EXECUTION_KEYS}
    out["run"] = {k: v for k, v in d["run"].items() if k not in RUN_EXECUTION_KEYS}
    return out


def check_run_dir(cfg: Config) -> Optional[str]:
    """Before anything is written: None (fresh), 'resume', or 'overwrite'. Raises ConfigError."""
    run_dir = run_dir_of(cfg)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        # logs/ and the job's api-key may exist: slurm/opd.sbatch starts the servers (logging
        # there) before `opd run`.
        if run_dir.exists() and any(p.name not in ("logs", "api-key") for p in run_dir.iterdir()) \
                and not cfg.run.overwrite:
            raise ConfigError(f"run.name: {run_dir} exists and is not a run directory; choose another "
                              f"run.name or set run.overwrite=true")
        return None
    try:
        old = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError:
        old = None
    if isinstance(old, dict) and _identity(old) == _identity(config_dict(cfg)):
        return "resume" if cfg.checkpoint.resume else "overwrite"
    if cfg.run.overwrite:
        return "overwrite"
    raise ConfigError(f"run.name: {run_dir} holds a run with different settings; choose another "
                      f"run.name, or set run.overwrite=true to delete that run (its checkpoints too) "
                      f"and start again")


def open_run_dir(cfg: Config, mode: Optional[str]) -> Path:
    run_dir = run_dir_of(cfg)
    if mode == "overwrite" and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"  # whole or not at all: a torn config.yaml would refuse the resume
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, run_dir / "config.yaml")
    return run_dir


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint (complete ones are renamed into place atomically)."""
    ckpt_root = run_dir / "checkpoints"
    if not ckpt_root.is_dir():
        return None
    steps = sorted((p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                    and p.name[len(CHECKPOINT_PREFIX):].isdigit()), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    return steps[-1] if steps else None


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    ckpt_root = run_dir / "checkpoints"
    if not ckpt_root.is_dir():
        return
    done = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                  and p.name[len(CHECKPOINT_PREFIX):].isdigit())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # Temp directories of writes that were killed half-way (never renamed into place).
    for stale in ckpt_root.glob(f".{CHECKPOINT_PREFIX}*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def finished(run_dir: Path) -> bool:
    """The run in ``run_dir`` completed (its summary.json says so)."""
    try:
        return bool(json.loads((run_dir / "summary.json").read_text()).get("completed"))
    except (OSError, ValueError):
        return False


def reusable(phase: Config) -> bool:
    """A multi-run command's phase already ran: its run directory holds a finished run of the same
    settings and run.num_steps. ConfigError if it holds a finished run of other settings (an edited
    recipe): reusing it would report a run that was not asked for."""
    from opd_megatron.config.load import load_config

    run_dir = run_dir_of(phase)
    if not finished(run_dir):
        return False
    try:  # through the schema: a setting added since that run compares as its default
        old: Optional[Dict[str, Any]] = config_dict(load_config(str(run_dir / "config.yaml")))
    except (OSError, ConfigError, ValueError):
        old = None
    if old is not None and _identity(old) == _identity(config_dict(phase)) \
            and old["run"]["num_steps"] == phase.run.num_steps:
        return True
    raise ConfigError(f"run.name: {run_dir} holds a finished run with other settings than this one asks for "
                      f"(an edited recipe or override); move that directory away or choose another run.name")


def run_phase(tag: str, name: str, phase: Config, root: Path, *extra: str) -> None:
    """One phase of a multi-run command (``opd continual``, ``opd compare``): its config written to
    ``root/phases/<name>.yaml`` and run as ``opd run`` in a subprocess; a failure names the run
    directory (a rerun of the same command resumes it)."""
    path = root / "phases" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(phase))
    print(f"[{tag}] {name}: opd run {path}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "opd_megatron", "run", str(path), *extra],
                            env=dict(os.environ, PYTHONHASHSEED=os.environ.get("PYTHONHASHSEED", "0")))
    # SIGTERM/SIGUSR1 (Slurm's warning, a kill) go to the run, which checkpoints and exits 3;
    # then this command exits 3 too, through its cleanup (the servers it started stop).
    old = {sig: signal.signal(sig, lambda signum, _: proc.send_signal(signum))
           for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if code == EXIT_PREEMPTED:
        print(f"[{tag}] {name}: preempted at a checkpoint; rerun the same command to resume", flush=True)
        raise SystemExit(EXIT_PREEMPTED)
    if code != 0:
        raise RuntimeFailure(f"{tag} phase {name} failed with exit code {code} (see {root / name}); rerun the "
                             "same command to resume it")
