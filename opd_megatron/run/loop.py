"""The run, top to bottom: resume, first sync, eval, steps, final eval, checkpoint, export.

One step, the same for opd, sft, rl and opd+reward: prompts -> rollouts (student servers;
teacher servers for sft) -> teacher scores -> reward (rl, opd+reward) -> advantages -> learner
step -> weight sync -> eval / checkpoint / log. Everything it touches is built by opd_megatron.run.session
and passed in as ``Components``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from opd_megatron import faults
from opd_megatron.config.schema import Config
from opd_megatron.errors import EXIT_OK, EXIT_PREEMPTED, RuntimeFailure
from opd_megatron.methods import full_vocab_kl, method_of
from opd_megatron.objective.batching import add_advantages, pack_rollouts, response_lengths, sampled_reverse_kl
from opd_megatron.run.logs import StageTimer
from opd_megatron.run.pipeline import Ahead


@dataclass
class Components:
    cfg: Config
    prompts: Any          # opd_megatron.data.PromptSource: the task's training prompts
    sample: Callable      # (prompts) -> list[Rollout]: student rollouts, or teacher samples for sft
    score: Optional[Callable]   # (rollouts) -> None: fills teacher logprobs in place
    reward: Optional[Callable]  # (rollouts) -> None: fills Rollout.reward; None: the method uses none
    learner: Any          # opd_megatron.learner.Learner
    sync: Callable        # (version) -> None: pushes learner weights to the student servers
    evaluate: Callable    # (step) -> dict of eval metrics
    teacher_accuracy: Callable  # () -> the teacher's held-out accuracy, or None
    state: Any            # opd_megatron.run.state.RunState: before/after, checkpoint, resume
    flops: Any            # opd_megatron.plan.flops.StepFlops
    log: Any              # opd_megatron.run.logs.MetricsWriter
    export_dir: Any       # where the final student goes in HF format
    external_servers: bool = False
    pad_id: int = 0
    preempted: Callable[[], bool] = lambda: False
    stop_after: Optional[int] = None
    """Stop after this step as a preempted run does (a rehearsal's checkpoint and resume)."""
    num_skipped: int = 0
    timer: StageTimer = field(default_factory=StageTimer)
    stream: Optional[Callable] = None
    """(prompts, busy) -> rollouts sampled and scored as a stream (rollout.stream_chunks), or None."""
    reached: Optional[Dict[str, Any]] = None
    """The eval that reached eval.stop_at_accuracy (the run's last), once it did."""
    pending: Dict[int, list] = field(default_factory=dict)
    """rollout.max_staleness=k: rollouts of steps to come by step, each sampled while the step k
    before it trained (checkpointed with the run, so a resume trains on them as they are)."""


def run(c: Components) -> int:
    """The whole run; returns its exit code (EXIT_PREEMPTED: checkpointed early, rerun to resume)."""
    cfg, state = c.cfg, c.state
    start = state.resume(c)
    c.log.rewind(start if start > 0 else None)  # the steps it replays are logged again, once
    if start > 0 or c.external_servers:  # servers started elsewhere (or before a requeue) may hold other weights
        c.sync(start)
    if not state.before:
        with c.timer.stage("eval"):
            state.before = c.evaluate(0)
            teacher = c.teacher_accuracy()
            if teacher is not None:
                state.before["teacher_accuracy"] = teacher
        c.log.write({"step": 0, **state.before})
    state.step = train(c, start)
    if _stopping(c, state.step) and state.step < cfg.run.num_steps:
        return EXIT_PREEMPTED
    with c.timer.stage("eval"):  # a run stopped at its target accuracy was just evaluated
        state.after = c.reached or c.evaluate(state.step)
    with c.timer.stage("checkpoint"):
        if state.saved_step != state.step:  # the last step's own checkpoint is the final one
            state.checkpoint(c, state.step)
        if cfg.checkpoint.export_hf:
            c.learner.export_hf(c.export_dir)
    c.log.write({"step": state.step, **state.after, "flops": c.flops.as_dict(), "final": True})
    c.log.close()
    state.completed = True
    return EXIT_OK


def train(c: Components, start_step: int) -> int:
    """Run steps start_step+1 .. num_steps; returns the last completed step. With
    rollout.max_staleness=k, step n+k's batch is sampled and scored while step n trains, by the
    weights the servers hold (version n-1), and the push of version n waits for it (it lands
    between requests, never inside one); steps 1..k sample their own batch first."""
    cfg, step, k = c.cfg, start_step, c.cfg.rollout.max_staleness
    with_topk = full_vocab_kl(cfg.objective)
    on_policy = method_of(cfg.objective).on_policy
    while step < cfg.run.num_steps:
        t0 = time.perf_counter()
        rollouts = c.pending.pop(step + 1, None) or _fresh_batch(c, step, on_policy)
        ahead = None
        if k and step + 1 + k <= cfg.run.num_steps:
            prompts = c.prompts.take(cfg.rollout.prompts_per_step)
            ahead = Ahead(lambda p=prompts: _rollouts(c, p, overlapped=True))
        if c.reward is not None:
            c.reward(rollouts)
        batch = pack_rollouts(rollouts, c.pad_id, with_topk=with_topk)
        batch = add_advantages(batch, rollouts, cfg.objective, student_logprobs_BT=_kl_logprobs(c, batch))
        step += 1
        record = _learn(c, step, batch, rollouts, on_policy, push=ahead is None)
        if ahead is not None:
            c.pending[step + k] = _join(c, ahead, prompts, step, push=on_policy and not record.get("skipped"))
        if cfg.eval.interval and step % cfg.eval.interval == 0 and step < cfg.run.num_steps:
            with c.timer.stage("eval"):
                metrics = c.evaluate(step)
            record.update(metrics)
            if cfg.eval.stop_at_accuracy and metrics.get("accuracy", 0.0) >= cfg.eval.stop_at_accuracy:
                c.reached = metrics
        record.update(flops=c.flops.as_dict(), stage_seconds=c.timer.pop_step(), num_skipped=c.num_skipped,
                      tokens_per_s=batch.num_tokens / max(time.perf_counter() - t0, 1e-9))
        # The line first, then the checkpoint: a kill between the two resumes from the previous
        # checkpoint, which rewinds the line away and writes it again (the checkpoint's time is
        # in the next step's stage_seconds).
        c.log.write(record, print_line=step % cfg.run.log_interval == 0)
        faults.after_log(step)
        if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or _stopping(c, step):
            with c.timer.stage("checkpoint"):
                c.state.checkpoint(c, step)
        if _stopping(c, step):
            return step
        if c.reached:  # eval.stop_at_accuracy: the target is reached, the run ends here
            return step
    return step


def _fresh_batch(c: Components, step: int, on_policy: bool) -> list:
    """Step ``step + 1``'s rollouts. Off-policy (sft) with rollout.offpolicy_prefetch_steps=k:
    the teacher data of steps up to the next multiple of k in one call; the rest wait in
    ``c.pending`` (checkpointed), each batch's group ids from 0 as if drawn alone."""
    P = c.cfg.rollout.prompts_per_step
    k = 1 if on_policy else c.cfg.rollout.offpolicy_prefetch_steps
    n = k - step % k
    rollouts = _rollouts(c, c.prompts.take(P * n))
    if n == 1:
        return rollouts
    parts: Dict[int, list] = {}
    for r in rollouts:
        r.group_id, j = r.group_id % P, r.group_id // P
        parts.setdefault(j, []).append(r)
    c.pending.update({step + 1 + j: part for j, part in parts.items() if j > 0})
    return parts[0]


def _rollouts(c: Components, prompts, overlapped: bool = False) -> list:
    """The step's rollouts, teacher-scored when the method scores; an overlapped batch's stage
    times go under ``overlap:`` (they ran beside the learner, not in the step's own timeline)."""
    pre = "overlap:" if overlapped else ""
    if c.stream is not None:
        with c.timer.stage(pre + "rollout"):
            return c.stream(prompts, lambda role, s: c.timer.add(f"overlap:{role}_busy", s))
    with c.timer.stage(pre + "rollout"):
        rollouts = c.sample(prompts)
    if c.score is not None:
        with c.timer.stage(pre + "teacher_score"):
            c.score(rollouts)
    return rollouts


def _join(c: Components, ahead: Ahead, prompts, step: int, push: bool) -> list:
    """The overlapped batch, then the push of ``step``'s weights, between requests. A batch that
    failed on its thread (a server died there) is sampled again here after the push, through the
    loop's restart-and-resync path."""
    try:
        with c.timer.stage("wait_rollout"):
            rollouts = ahead.result()
    except RuntimeFailure as exc:
        rollouts = None
        print(f"[opd] the overlapped batch failed ({str(exc).splitlines()[0][:200]}); sampling it again "
              "after the weight push", flush=True)
    if push:
        with c.timer.stage("weight_sync"):
            c.sync(step)
    return rollouts if rollouts is not None else _rollouts(c, prompts)


def _kl_logprobs(c: Components, batch):
    """objective.kl_at=learner: the learner's logprobs of the sampled tokens now, for the reverse KL."""
    if c.cfg.objective.kl_at != "learner":
        return None
    with c.timer.stage("learner_logprobs"):
        return c.learner.logprobs(batch).detach().float() * batch.response_mask


def _learn(c: Components, step: int, batch, rollouts, on_policy: bool, push: bool = True) -> Dict[str, Any]:
    """The learner step on ``batch`` and (``push``) the weight push; returns the step's record. A
    batch, loss or gradient that is not finite is skipped (no update, no push) or stops the run."""
    if not _finite(batch):
        return _skip_or_stop(c, step, "teacher logprobs or advantages")
    with c.timer.stage("train"):
        metrics = c.learner.train_step(batch)
    if metrics.get("skipped"):  # the learner applied no update
        return _skip_or_stop(c, step, "loss or gradients")
    if on_policy and push:  # off-policy sft samples the teacher: the student servers sync before eval only
        with c.timer.stage("weight_sync"):
            c.sync(step)
    c.flops.add_step(rollouts, batch)
    record = {"step": step, **metrics, "reverse_kl_sampled": sampled_reverse_kl(batch), **response_lengths(rollouts)}
    if on_policy:  # versions the sampler's weights lagged the learner's (before this step) by
        behind = [step - 1 - r.weight_version for r in rollouts]
        record.update(staleness_mean=sum(behind) / len(behind), staleness_max=float(max(behind)))
    if c.reward is not None:
        record["reward_mean"] = sum(r.reward or 0.0 for r in rollouts) / len(rollouts)
    return record


def _stopping(c: Components, step: int) -> bool:
    return c.preempted() or step == c.stop_after


def _finite(batch) -> bool:
    import torch

    tensors = [batch.advantages, batch.teacher_logprobs, batch.teacher_topk_logprobs]
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _skip_or_stop(c: Components, step: int, what: str) -> Dict[str, Any]:
    """Per run.on_nonfinite: count the step as skipped (no update, no sync; its record says so
    and the run goes on), or stop the run."""
    if c.cfg.run.on_nonfinite == "stop":
        raise RuntimeFailure(f"non-finite {what} at step {step}; stopped (run.on_nonfinite=stop), "
                             f"last good checkpoint kept")
    c.num_skipped += 1
    return {"step": step, "skipped": 1.0}
