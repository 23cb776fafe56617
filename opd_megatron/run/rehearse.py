"""``run.rehearse``: any recipe, shrunk to this machine, through every stage its cluster run has.

``opd run RECIPE --rehearse`` (``run.rehearse=true``; also ``opd validate --rehearse`` and
``sbatch slurm/opd_qwen3.sh run.rehearse=true``) is how a user smoke-tests a cluster recipe on
a laptop or a login node before spending GPU-hours. ``rehearsal_changes`` turns the recipe into
its toy-size twin, as ordinary overrides (so the resolved config.yaml says what ran):

- models: a student or teacher too big for a CPU (over 100M parameters, or not here) is
  replaced, both together, by the shipped tiny Qwen3-architecture pair (``assets/tiny-bpe/``:
  byte-level BPE with ChatML tokens, a Qwen3-style thinking chat template, an embedding padded
  past the tokenizer), float32;
- data: the same source type; a hub dataset that is not here is replaced by the shipped sample
  in DeepMath's schema when the recipe reads that schema (question, final_answer), else the
  rehearsal refuses in one line; benchmarks without a local file get the shipped samples in
  their public schema;
- sizes: 4 steps, a few prompts and samples, 64-token responses, the eval preset's sampling
  kept with 2 samples;
- layout: the learner's tp and pp kept where the tiny student allows (heads, KV heads and
  layers divide) within ``MAX_LEARNER_PROCESSES`` gloo processes, dp with what is left; one
  server per role at tp 1 on CPU; the weight-sync transport kept (``distributed`` runs over gloo);
- cluster: the local CPU profile, node counts kept (a Slurm rehearsal places the same roles).

Every stage then runs: data through the chat template, rollout, teacher scoring, reward (when
the method uses one), the in-loop benchmarks, weight sync, a checkpoint, a stop after step
``STOP_STEP`` exactly as a preemption, a resume from it, the final evaluation, export and report.
``drive`` runs the two halves (under torchrun when the learner has more than one process);
under Slurm the job's own requeue does the resume.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from opd_megatron.config.schema import Config, ModelConfig
from opd_megatron.errors import EXIT_OK, EXIT_PREEMPTED, ConfigError, RuntimeFailure
from opd_megatron.methods import needs_teacher_model

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
TINY_MODELS = {"student": ASSETS / "tiny-bpe/student-init", "teacher": ASSETS / "tiny-bpe/teacher"}
"""Shipped (tests/test_real_path.py keeps them current with their prepare recipes)."""
SAMPLE_DATA = ASSETS / "data/math-tiny/train.jsonl"
SAMPLE_SCHEMA = ("question", "final_answer")
"""The shipped sample's fields (DeepMath-103K's)."""
SAMPLE_BENCHMARKS = {"aime24": ASSETS / "data/math-tiny/aime24.jsonl",
                     "aime25": ASSETS / "data/math-tiny/aime24.jsonl",   # the same (problem, answer) schema
                     "math500": ASSETS / "data/math-tiny/aime24.jsonl",
                     "gpqa_diamond": ASSETS / "data/math-tiny/gpqa_diamond.jsonl"}
BIG_PARAMS = 100_000_000
"""A model over this many parameters is replaced by the tiny pair."""
MAX_LEARNER_PROCESSES = 4
"""gloo learner processes a rehearsal starts (4: tp 2 x dp 2 still runs on 2 cores)."""
NUM_STEPS = 4
STOP_STEP = 2
"""The rehearsal stops after this step as if preempted (checkpoint, exit 3) and resumes."""
CHILD_ENV = "OPD_REHEARSAL_PART"
"""Set in the two runs ``drive`` starts (1, 2), and by slurm/opd.sbatch for its learner
(``slurm``: the job's requeue resumes): they are a rehearsal's parts, not its driver."""

Change = Tuple[str, Any, Any]
"""(dotted key, the recipe's value, the rehearsal's value)."""


def _needs_tiny(model: ModelConfig) -> bool:
    from opd_megatron.plan.flops import model_shape

    if not model.path or model.prepare:  # a model built here (tiny by construction)
        return False
    if not Path(model.path).exists():
        return True
    shape = model_shape(model)
    return shape is None or shape.total_params > BIG_PARAMS


def _tiny_shape() -> Tuple[int, int, int]:
    """(attention heads, KV heads, layers) of the tiny student."""
    import json

    hf = json.loads((TINY_MODELS["student"] / "config.json").read_text())
    return hf["num_attention_heads"], hf["num_key_value_heads"], hf["num_hidden_layers"]


def _fit(value: int, limit: int, *divides: int) -> int:
    """The largest n <= min(value, limit) dividing every one of ``divides``."""
    n = max(1, min(value, limit))
    while n > 1 and any(d % n for d in divides):
        n -= 1
    return n


def rehearsal_changes(cfg: Config) -> List[Change]:
    """What a rehearsal changes in ``cfg`` (empty: it is already its own rehearsal)."""
    from opd_megatron.data.dataset import DATASET_SOURCES, is_local

    out: List[Change] = []

    def put(key: str, new: Any) -> None:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        old = node.copy() if isinstance(node, (dict, list)) else node
        if old != new:
            out.append((key, old, new))

    roles = ["student"] + (["teacher"] if needs_teacher_model(cfg) else [])
    replaced = any(_needs_tiny(getattr(cfg, r)) for r in roles)
    for role in roles if replaced else ():
        put(f"{role}.path", str(TINY_MODELS[role]))
        put(f"{role}.prepare", None)
        put(f"{role}.tokenizer", None)
        put(f"{role}.dtype", "float32")
        put(f"{role}.flops_name", None)
    d = cfg.data
    if d.source in DATASET_SOURCES and not is_local(d):
        if (d.prompt_key, d.answer_key) != SAMPLE_SCHEMA:
            raise ConfigError(f"data.path: hub dataset {d.path} is not here and its fields ({d.prompt_key}, "
                              f"{d.answer_key}) are not the shipped sample's; rehearse on a local copy: "
                              f"data.source=jsonl|parquet|disk data.path=PATH")
        put("data.source", "jsonl")
        put("data.path", str(SAMPLE_DATA))
    if d.num_heldout:
        put("data.num_heldout", min(d.num_heldout, 32))
    r = cfg.rollout
    put("rollout.prompts_per_step", min(r.prompts_per_step, 4))
    put("rollout.samples_per_prompt", min(r.samples_per_prompt, 2))
    put("rollout.max_new_tokens", min(r.max_new_tokens, 64))
    put("run.num_steps", NUM_STEPS)
    put("run.log_interval", 1)
    if not cfg.run.name.endswith("-rehearsal"):
        put("run.name", f"{cfg.run.name}-rehearsal")
    put("checkpoint.interval", STOP_STEP)
    _eval_changes(cfg, put)
    _layout_changes(cfg, put, replaced)
    return out


def _eval_changes(cfg: Config, put) -> None:
    from opd_megatron.evaluation.suite import sampling_from_eval_config

    e = cfg.eval
    sampling = sampling_from_eval_config(e)
    put("eval.preset", "none")  # the preset's sampling, kept as plain fields at toy size
    put("eval.temperature", sampling.temperature)
    put("eval.top_p", sampling.top_p)
    put("eval.top_k", sampling.top_k)
    put("eval.samples_per_prompt", min(sampling.num_samples, 2))
    put("eval.max_new_tokens", min(e.max_new_tokens, 64))
    put("eval.num_prompts", min(e.num_prompts, 8))
    put("eval.interval", STOP_STEP)
    files = dict(e.benchmark_files)
    for name in e.benchmarks:
        if name in files or name == "arithmetic":
            continue
        if name not in SAMPLE_BENCHMARKS:
            raise ConfigError(f"eval.benchmark_files.{name}: no shipped sample of {name} to rehearse with; "
                              f"pass a local file in its public schema")
        files[name] = str(SAMPLE_BENCHMARKS[name])
    put("eval.benchmark_files", files)


def _layout_changes(cfg: Config, put, replaced: bool) -> None:
    p, e, o = cfg.parallel, cfg.engines, cfg.objective
    if replaced:
        heads, kv, layers = _tiny_shape()
        tp = _fit(p.tp, MAX_LEARNER_PROCESSES, heads, kv)
        pp = _fit(p.pp, MAX_LEARNER_PROCESSES // tp, layers)
        put("parallel.tp", tp)
        put("parallel.pp", pp)
        put("parallel.dp", _fit(p.dp, MAX_LEARNER_PROCESSES // (tp * pp)))
        put("lora.rank", min(cfg.lora.rank, 8))
        if o.teacher_top_k:
            put("objective.teacher_top_k", min(o.teacher_top_k, 64))
    put("parallel.microbatch_tokens", min(p.microbatch_tokens, 8192))
    put("engines.device", "cpu")
    for role in ("student", "teacher"):
        rc = getattr(e, role)
        put(f"engines.{role}.num_servers", 1)
        put(f"engines.{role}.tp", 1)
        put(f"engines.{role}.dtype", "float32")
        put(f"engines.{role}.max_total_tokens", min(rc.max_total_tokens, 16384))
    put("cluster.profile", "local-cpu")
    put("cluster.gpus_per_node", 0)


def as_overrides(changes: Sequence[Change]) -> List[str]:
    """The changes as command-line overrides (``key=value``, YAML values)."""
    import json

    def value(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {json.dumps(str(x))}" for k, x in v.items()) + "}"
        return str(v)

    return [f"{key}={value(new)}" for key, _, new in changes]


def describe(changes: Sequence[Change], tag: str = "rehearse") -> List[str]:
    return [f"[{tag}] {key}: {old!r} -> {new!r}" for key, old, new in changes]


def drive(cfg: Config, recipe: str, overrides: Sequence[str]) -> int:
    """The rehearsal's two halves as two runs of the same command: the first stops after
    STOP_STEP as if preempted (exit 3), the second resumes and finishes. Under torchrun when
    the learner has more than one process. Returns the exit code."""
    from opd_megatron.run import rundir

    run_dir = rundir.run_dir_of(cfg)
    if run_dir.exists():
        raise ConfigError(f"run.name: {run_dir} exists (an earlier rehearsal); set run.name=NAME or "
                          f"remove that directory to rehearse again")
    world = cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.dp
    cmd = [sys.executable, "-m", "opd_megatron", "run", recipe, *overrides]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "opd_megatron", "run", recipe, *overrides]
    t0 = time.perf_counter()
    for part, expected in ((1, EXIT_PREEMPTED), (2, EXIT_OK)):
        env = dict(os.environ, **{CHILD_ENV: str(part)})
        code = subprocess.run(cmd, env=env).returncode
        if code != 0:  # torchrun reports every failing exit as 1: the run's own code is in its summary
            code = _summary_exit_code(run_dir, code)
        if code != expected:
            what = f"stopped with exit {code} before step {STOP_STEP}" if part == 1 else f"exited {code}"
            raise RuntimeFailure(f"rehearsal part {part} {what}; see {run_dir}/logs and the output above")
        if part == 1:
            print(f"[rehearse] stopped after step {STOP_STEP} as a preempted run does; resuming", flush=True)
    print(f"[rehearse] every stage ran ({world} learner process(es), weight sync {cfg.engines.weight_sync}, "
          f"checkpoint + resume at step {STOP_STEP}) in {time.perf_counter() - t0:.0f} s: {run_dir}", flush=True)
    return EXIT_OK


def _summary_exit_code(run_dir: Path, default: int) -> int:
    import json

    try:
        return int(json.loads((run_dir / "summary.json").read_text()).get("exit_code", default))
    except (OSError, ValueError, TypeError):
        return default


def is_driver(cfg: Config) -> bool:
    """This ``opd run`` drives a rehearsal (not one of its halves, not a torchrun rank)."""
    return cfg.run.rehearse and CHILD_ENV not in os.environ and "RANK" not in os.environ


def stop_step(cfg: Config) -> Optional[int]:
    """The step after which a rehearsal stops as if preempted; None for every other run."""
    return STOP_STEP if cfg.run.rehearse else None


__all__ = ["rehearsal_changes", "as_overrides", "describe", "drive", "is_driver", "stop_step",
           "NUM_STEPS", "STOP_STEP"]
