"""metrics.jsonl: the schema of a run's per-step records and the one reader of the file.

The loop (opd_megatron.run.logs.MetricsWriter) appends one JSON object per line; every
reader of the file (report, compare, the continual recipe's benchmark table) goes through
``read_metrics`` so a truncated or foreign line is handled the same way everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from opd_megatron.plan.flops import ROLES

METRICS_FILE = "metrics.jsonl"

METRIC_KEYS: Dict[str, str] = {
    "step": "int, required. Optimizer steps completed; 0 = the record before training.",
    "final": "bool. True on the end-of-run evaluation record.",
    "loss": "float. Training loss of the step.",
    "grad_norm": "float. Global gradient norm before clipping.",
    "lr": "float. Learning rate of the step.",
    "num_tokens": "int. Response tokens trained on in the step.",
    "tokens_per_s": "float. Trained tokens per wall second of the step.",
    "reward_mean": "float, methods with a reward only (rl, opd+reward). Mean environment "
                   "reward of the step's rollouts.",
    "reverse_kl_sampled": "float. Mean sampled-token log p_student - log p_teacher over the "
                          "step's training batch (nats/token).",
    "reverse_kl": "float, eval records only. Held-out per-token reverse KL of the student to "
                  "the teacher on student T=1 samples (nats/token).",
    "accuracy": "float in [0, 1], eval records only, absent with data.num_heldout=0. Held-out "
                "student accuracy (avg@k).",
    "teacher_accuracy": "float in [0, 1], step-0 record. The teacher's held-out accuracy.",
    "flops": "dict, cumulative since the start: FlopsCounter.as_dict(), i.e. one key per role "
             f"({', '.join(ROLES)}) plus teacher, student, total.",
    "flops_total": "float, optional. Cumulative total FLOPs (else flops['total']).",
    "stage_seconds": "dict stage -> wall seconds spent in it during this step (rollout, "
                     "teacher_score, train, weight_sync, eval, checkpoint, ...).",
    "num_skipped": "int. Steps skipped so far for non-finite values.",
    "<benchmark>_avg_at_k": "float, eval records only, optional. avg@k on eval.benchmarks "
                            "(and <benchmark>_pass_at_<k>), from evaluation.evaluate_benchmarks.",
}


def read_metrics(path: Path) -> Tuple[List[dict], int]:
    """Records of metrics.jsonl and the number of unreadable lines (a killed run may leave
    a truncated last line)."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
            records.append(rec)
        else:
            bad += 1
    return records, bad
