"""The other files of a run directory the report reads: config.yaml and the JSON objects
(summary.json, environment.json). Each reader returns an empty/None value for a missing or
broken file: a report of a broken run must still be written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

SUMMARY_KEYS: Dict[str, str] = {
    "completed": "bool. The run reached run.num_steps and wrote its final checkpoint.",
    "method": "str. objective.method (opd | sft | rl | opd+reward).",
    "steps": "int. Last completed step.",
    "teacher_accuracy": "float. Teacher held-out accuracy (target of 'FLOPs to 95%').",
    "student_accuracy_before": "float.", "student_accuracy_after": "float.",
    "reverse_kl_before": "float.", "reverse_kl_after": "float.",
    "flops": "dict. Final FlopsCounter.as_dict().",
    "stage_seconds": "dict stage -> total wall seconds.",
    "num_skipped_steps": "int.", "wall_s": "float. Run wall seconds.",
    "error": "str, optional. Why a failed run stopped.",
    "seeds": "dict, optional. Seeds beyond run.seed (e.g. data, sampling, eval).",
}


def read_json(path: Path) -> Optional[dict]:
    """A JSON object file, or None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_config(run_dir: Path) -> Tuple[str, dict]:
    """config.yaml of a run directory: its text and the parsed mapping ("", {} if absent)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return "", {}
    text = path.read_text(errors="replace")
    try:
        import yaml

        data = yaml.safe_load(text)
    except Exception:  # a report of a broken run must still be written
        data = None
    return text, data if isinstance(data, dict) else {}
