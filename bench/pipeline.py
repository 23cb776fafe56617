"""The step as a pipeline (#20), measured side by side in one run: the tiny recipe with
rollout.max_staleness 0 and 1, each with rollout.stream_chunks off (0), 2 batches (2) and each
rollout scored as it finishes (1), then the same schedules projected onto the Qwen3 recipe's three
node groups from its FLOPs account.

    .venv/bin/python bench/pipeline.py                 # 6 runs x 30 steps, ~20 min on 2 cores
    .venv/bin/python bench/pipeline.py --steps 10 --eval-prompts 100

Each run is a real ``opd run`` (its own SGLang servers, the Megatron-Core learner), one after
another. Per run: wall seconds per step (the loop's own stages, evaluation and checkpoints left
out, the first step too), steps per second as a ratio to the serial loop, each role's busy
fraction of the step (learner: train + learner logprobs; student servers: sampling; teacher
servers: scoring; what ran beside the loop counts too, so fractions add up to more than 1 when
stages overlap), and held-out accuracy after the last step with its standard error.

The projection: seconds per stage of one Qwen3 step from ``plan.describe.flops_per_step`` at a
stated MFU (``plan.budget.step_seconds``: each role on its own GPUs), then the learner's idle share
of the step for each schedule. Serial: sampling, scoring, training one after another. Streaming
with N batches: scoring of batch j overlaps sampling of batch j+1 (max(s, t) + min(s, t) / N); each
rollout: the same with N the step's rollouts, the responses finishing spread over the sampling.
Staleness 1: the next step's sampling and scoring run while the learner trains (max(train, rest)).
Weight-sync time is not in the FLOPs account and is left out of both.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = [("serial", 0, 0), ("streaming", 0, 2), ("each rollout", 0, 1), ("staleness 1", 1, 0),
             ("staleness 1 + streaming", 1, 2), ("staleness 1 + each rollout", 1, 1)]
LOOP_EXCLUDED = ("eval", "checkpoint")
QWEN3_RECIPE = REPO / "recipes" / "opd-qwen3-8b-to-8b-base-3n8g.yaml"


def run_one(out: Path, name: str, staleness: int, chunks: int, steps: int, eval_prompts: int) -> List[dict]:
    args = [sys.executable, "-m", "opd_megatron", "run", str(REPO / "recipes/opd-tiny-cpu.yaml"),
            f"run.name={name}", f"run.output_dir={out}", f"run.num_steps={steps}", "run.quiet=true",
            "eval.interval=0", f"eval.num_prompts={eval_prompts}", "checkpoint.interval=0",
            f"rollout.max_staleness={staleness}", f"rollout.stream_chunks={chunks}"]
    log = out / f"{name}.log"
    with log.open("w") as f:
        proc = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"bench/pipeline.py: run {name} failed (exit {proc.returncode}); see {log}")
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]


def summarize(records: List[dict], eval_prompts: int) -> Dict[str, float]:
    """Wall per step, busy fractions per role, final accuracy and its standard error."""
    steps = [r for r in records if "loss" in r][1:]  # the first step also starts everything
    walls, busy = [], {"learner": 0.0, "student": 0.0, "teacher": 0.0}
    for r in steps:
        s = r.get("stage_seconds") or {}
        walls.append(sum(v for k, v in s.items() if not k.startswith("overlap:") and k not in LOOP_EXCLUDED))
        busy["learner"] += s.get("train", 0.0) + s.get("learner_logprobs", 0.0)
        streamed = "overlap:student_busy" in s
        busy["student"] += (s.get("overlap:student_busy", 0.0) if streamed
                            else s.get("rollout", 0.0) + s.get("overlap:rollout", 0.0))
        busy["teacher"] += (s.get("overlap:teacher_busy", 0.0) if streamed
                            else s.get("teacher_score", 0.0) + s.get("overlap:teacher_score", 0.0))
    wall = sum(walls)
    acc = [r for r in records if isinstance(r.get("accuracy"), (int, float))][-1]["accuracy"]
    return {"wall_per_step": wall / len(walls), **{f"busy_{k}": v / wall for k, v in busy.items()},
            "accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / eval_prompts)}


def projection(mfu: float, sampling_mfu: float, chunks: int) -> List[str]:
    from opd_megatron.config.load import load_config
    from opd_megatron.plan.budget import step_seconds
    from opd_megatron.plan.describe import flops_per_step
    from opd_megatron.plan.placement import plan

    cfg = load_config(QWEN3_RECIPE)
    placement = plan(cfg, [f"node{i}" for i in range(cfg.cluster.num_nodes)])
    e, p = cfg.engines, cfg.parallel
    gpus = {"student": e.student.num_servers * e.student.tp, "teacher": e.teacher.num_servers * e.teacher.tp,
            "learner": p.tp * p.pp * p.dp}
    secs = step_seconds(flops_per_step(cfg, {}), gpus, placement.profile.gpu_peak_tflops, mfu=mfu,
                        sampling_mfu=sampling_mfu)
    s, t, train = secs.get("student_sampling", 0.0), secs.get("teacher_scoring", 0.0), secs["learner_train"]
    streamed = max(s, t) + min(s, t) / chunks
    # each rollout scored as it finishes: with finish times spread evenly over the sampling, only
    # the last rollout's scoring (or the scoring beyond the sampling) is left after it
    num_rollouts = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    each = max(s, t) + min(s, t) / num_rollouts
    rows = {"serial": s + t + train, "streaming": streamed + train, "each rollout": each + train,
            "staleness 1": max(train, s + t), "staleness 1 + streaming": max(train, streamed),
            "staleness 1 + each rollout": max(train, each)}
    lines = [f"Qwen3 projection: {QWEN3_RECIPE.name}, GPUs student {gpus['student']} / teacher {gpus['teacher']} / "
             f"learner {gpus['learner']}, {placement.profile.gpu_peak_tflops:g} TFLOP/s per GPU, training MFU {mfu:g}, "
             f"sampling MFU {sampling_mfu:g} (upper bound: every response at max_new_tokens; weight sync left out;"
             f" 'each rollout' assumes the responses finish spread evenly over the sampling)",
             f"  stage seconds per step: sampling {s:.0f}, teacher scoring {t:.0f}, learner {train:.0f}",
             f"  {'schedule':26s} {'step s':>8s} {'learner idle':>13s} {'speed-up':>9s}"]
    for name, step in rows.items():
        lines.append(f"  {name:26s} {step:8.0f} {100 * (1 - train / step):12.1f}% {rows['serial'] / step:8.2f}x")
    # sampling scales as 1 / sampling MFU: the MFU at which the pipelined learner idles <= 20%
    for name, pieces in (("staleness 1 + streaming", chunks), ("staleness 1 + each rollout", num_rollouts)):
        limit = train / 0.8 - t / pieces  # sampling seconds that fit beside training (sampling > scoring)
        need = s * sampling_mfu / limit if limit > 0 else float("inf")
        lines.append(f"  {name} idles the learner <= 20% once sampling takes <= {limit:.0f} s "
                     f"(sampling MFU >= {need:.2f} on these GPUs, or {need / sampling_mfu:.2f}x the student GPUs)")
    return lines


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-prompts", type=int, default=500)
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--sampling-mfu", type=float, default=0.1)
    ap.add_argument("--projection-only", action="store_true", help="print the Qwen3 projection alone")
    args = ap.parse_args(argv)
    if not args.projection_only:
        with tempfile.TemporaryDirectory(prefix="opd-bench-pipeline-") as tmp:
            results = {name: summarize(run_one(Path(tmp), name.replace(" ", "").replace("+", "-"), st, ch,
                                               args.steps, args.eval_prompts), args.eval_prompts)
                       for name, st, ch in SCHEDULES}
        base = results["serial"]
        print(f"tiny recipe (recipes/opd-tiny-cpu.yaml), {args.steps} steps each, held-out accuracy on "
              f"{args.eval_prompts} prompts; busy = share of the loop's step time each role worked")
        print(f"{'schedule':26s} {'s/step':>7s} {'steps/s vs serial':>18s} {'learner':>8s} {'student':>8s} "
              f"{'teacher':>8s} {'accuracy':>15s}")
        for name, r in results.items():
            print(f"{name:26s} {r['wall_per_step']:7.3f} {base['wall_per_step'] / r['wall_per_step']:17.2f}x "
                  f"{100 * r['busy_learner']:7.1f}% {100 * r['busy_student']:7.1f}% {100 * r['busy_teacher']:7.1f}% "
                  f"{100 * r['accuracy']:7.1f}% ± {100 * r['accuracy_se']:.1f}")
    print("\n".join(projection(args.mfu, args.sampling_mfu, chunks=2)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
