"""What ``opd validate`` prints after the resolved config: processes and nodes per role, the
learner's parallel layout, memory per GPU by role, tokens and estimated FLOPs per step, and on
GPU profiles the estimated step time and GPU-hours at a stated MFU beside the published runs'
(``plan.budget``)."""

from __future__ import annotations

from typing import Dict, List, Optional

from opd_megatron.config.schema import Config
from opd_megatron.methods import step_roles
from opd_megatron.plan.budget import DEFAULT_MFU, DEFAULT_SAMPLING_MFU, REFERENCES, gpu_hours, step_seconds


def tokens_per_step(cfg: Config) -> Dict[str, int]:
    """Upper bounds from the recipe: every response runs to max_new_tokens."""
    r = cfg.rollout
    seqs = r.prompts_per_step * r.samples_per_prompt
    return {"sequences": seqs, "response_tokens_max": seqs * r.max_new_tokens}


def flops_per_step(cfg: Config, hf: Dict[str, Optional[dict]]) -> Dict[str, float]:
    """Upper-bound FLOPs of one step by role; ``hf``: the models' parsed config.json (preflight's),
    None where a model is not built yet. {} when the student's shape is unknown."""
    from opd_megatron.plan.flops import FlopsCounter, model_shape

    roles = step_roles(cfg)
    student = model_shape(cfg.student, hf.get("student"), "student")
    if student is None:
        return {}
    # The teacher's shape only where the step uses the teacher.
    uses_teacher = roles.sampler == "teacher_sampling" or roles.teacher_scores
    teacher = model_shape(cfg.teacher, hf.get("teacher"), "teacher") if uses_teacher else None
    counter = FlopsCounter(student, teacher, cfg.lora.rank, cfg.lora.targets)
    r = cfg.rollout
    n = r.prompts_per_step * r.samples_per_prompt
    ctx = r.max_new_tokens / 2
    if roles.sampler is not None and (teacher is not None or roles.sampler == "student_sampling"):
        counter.add(roles.sampler, n * r.max_new_tokens, ctx)
    if roles.teacher_scores and teacher is not None:
        counter.add("teacher_scoring", n * r.max_new_tokens, ctx)
    counter.add("learner_train", n * r.max_new_tokens, ctx)
    return counter.as_dict()


def describe_plan(cfg: Config, hf: Dict[str, Optional[dict]], num_nodes: Optional[int] = None,
                  mfu: float = DEFAULT_MFU, sampling_mfu: float = DEFAULT_SAMPLING_MFU) -> str:
    from opd_megatron.plan.placement import format_plan, plan

    p, e = cfg.parallel, cfg.engines
    nodes = [f"node{i}" for i in range(num_nodes or cfg.cluster.num_nodes)]
    placement = plan(cfg, nodes)
    lines: List[str] = [format_plan(placement)]
    lines.append(f"learner: tp={p.tp} pp={p.pp} dp={p.dp} ({p.tp * p.pp * p.dp} processes), "
                 f"microbatch {p.microbatch_tokens} tokens, distributed optimizer "
                 f"{'on' if p.distributed_optimizer else 'off'}")
    lines.append(f"student servers: {e.student.num_servers} x tp{e.student.tp} ({e.student.dtype})"
                 f"{' behind sglang-router' if e.router and e.student.num_servers > 1 else ''}; "
                 f"weight sync: {e.weight_sync}")
    lines.append(f"teacher servers: {e.teacher.num_servers} x tp{e.teacher.tp} ({e.teacher.dtype}); "
                 f"scored at T={cfg.objective.teacher_temperature}")
    t = tokens_per_step(cfg)
    lines.append(f"per step: {t['sequences']} sequences, <= {t['response_tokens_max']} response tokens")
    fl = flops_per_step(cfg, hf)
    if fl:
        roles = ", ".join(f"{k} {v:.3g}" for k, v in fl.items() if v and k not in ("total",))
        lines.append(f"estimated FLOPs per step (upper bound): total {fl['total']:.3g} ({roles})")
        lines.append(f"estimated FLOPs for {cfg.run.num_steps} steps: {fl['total'] * cfg.run.num_steps:.3g}")
        lines += _time_lines(cfg, placement, fl, mfu, sampling_mfu)
    return "\n".join(lines)


def _time_lines(cfg: Config, placement, fl: Dict[str, float], mfu: float, sampling_mfu: float) -> List[str]:
    """Step time and GPU-hours at the stated MFUs (GPU profiles only), then the references."""
    peak = placement.profile.gpu_peak_tflops
    if not (cfg.cluster.gpus_per_node and peak):
        return []
    e, p = cfg.engines, cfg.parallel
    gpus = {"student": e.student.num_servers * e.student.tp, "teacher": e.teacher.num_servers * e.teacher.tp,
            "learner": p.tp * p.pp * p.dp}
    secs = step_seconds(fl, gpus, peak, mfu=mfu, sampling_mfu=sampling_mfu)
    job_gpus = len(placement.nodes) * cfg.cluster.gpus_per_node
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in secs.items() if k != "total")
    hours = gpu_hours(secs["total"], cfg.run.num_steps, job_gpus)
    return [f"estimated step time at MFU {mfu:g} (sampling {sampling_mfu:g}; opd validate --mfu/--sampling-mfu), "
            f"{peak:g} TFLOP/s per GPU: {secs['total']:.0f} s ({stages})",
            f"estimated for {cfg.run.num_steps} steps on {job_gpus} GPUs: {secs['total'] * cfg.run.num_steps / 3600:.1f} h, "
            f"{hours:,.0f} GPU-hours (upper bound: every response at max_new_tokens)",
            *(f"  reference: {r}" for r in REFERENCES)]
