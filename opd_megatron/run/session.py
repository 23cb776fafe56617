"""One run's live objects: servers, clients, learner, evaluators; builds ``loop.Components``.

Kept apart from the loop so the loop reads top to bottom and this file holds the wiring.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from opd_megatron.run import rundir
from opd_megatron.config.schema import Config
from opd_megatron.data import Prompt, PromptSource, encode_prompt, heldout_prompts
from opd_megatron.run.logs import MetricsWriter
from opd_megatron.run.spmd import Collective, build_learner_side, stop_followers, world_size
from opd_megatron.objective.batching import pack_rollouts
from opd_megatron.run.loop import Components, train
from opd_megatron.methods import method_of, needs_teacher_servers, step_roles
from opd_megatron.data.arithmetic import is_correct
from opd_megatron.types import Rollout

FAULT_NAN_TEACHER_ENV = "OPD_FAULT_NAN_TEACHER_AT"
"""Fault injection for tests: the N-th training scoring call returns NaN teacher logprobs."""

FAULT_KILL_SERVER_ENV = "OPD_FAULT_KILL_SERVER"
"""Fault injection for tests: ``student@3,teacher@5`` SIGKILLs that role's first server while
the training step's request to it (rollout, teacher scoring) is in flight."""

EVAL_KL_PROMPTS = 200
"""Held-out prompts whose T=1 student samples measure the reverse KL to the teacher."""


class Session:
    def __init__(self, cfg: Config, run_dir: Path, stack: ExitStack, preempt: Any):
        self.cfg, self.run_dir, self.stack, self.preempt = cfg, run_dir, stack, preempt
        self.start_step = self.step = 0
        self.before: Dict[str, Any] = {}
        self.after: Dict[str, Any] = {}
        self.completed = False
        self.synced_version = 0  # servers start from the checkpoint the learner starts from
        self.num_scored = 0
        self.num_restarts = 0
        self.groups: Dict[str, Any] = {}
        self.components: Optional[Components] = None
        # OPD_FAULT_KILL_SERVER, read once: role -> training step whose call is hit (once each)
        self._kill_at = {role: int(step) for role, step in (
            item.split("@") for item in os.environ.get(FAULT_KILL_SERVER_ENV, "").split(",") if "@" in item)}

    # ----- set-up -------------------------------------------------------------------------
    def _start_servers(self) -> None:
        from opd_megatron.engines import EngineClient, launch_engines, make_weight_sync

        cfg = self.cfg
        teacher = cfg.teacher if needs_teacher_servers(cfg) else None
        groups = self.groups = launch_engines(cfg.student, teacher, cfg.engines, self.run_dir / "logs",
                                              seed=cfg.run.seed)
        for group in groups.values():
            self.stack.callback(group.stop)
        vocab = len(self.tokenizer)
        self.student_client = EngineClient.from_config(groups["student"].request_urls, cfg.engines,
                                                       full_vocab_size=vocab)
        self.teacher_client = (EngineClient.from_config(groups["teacher"].request_urls, cfg.engines,
                                                        full_vocab_size=vocab) if teacher else None)
        self.teacher_servers = (EngineClient.from_config(groups["teacher"].server_urls, cfg.engines)
                                if teacher and cfg.engines.flush_teacher_cache else None)
        self.weight_sync = make_weight_sync(cfg.engines, groups["student"].server_urls,
                                            base_model_dir=cfg.student.path,
                                            staging_dir=self.run_dir / "weight_sync")
        self.stack.callback(self.weight_sync.close)

    def _build(self) -> Components:
        from transformers import AutoTokenizer

        from opd_megatron.plan.flops import FlopsCounter, resolve_shape

        cfg = self.cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.student.tokenizer or cfg.student.path)
        self._start_servers()
        built = build_learner_side(cfg)  # initialises torch.distributed under torchrun
        if world_size() > 1:
            self.stack.callback(stop_followers)
            built = {role: Collective(obj, role) for role, obj in built.items()}
        self.learner = built["learner"]
        self.teacher_score_fn = self._sglang_teacher_score if self.teacher_client is not None else None
        if "teacher" in built:
            self.frozen_teacher = built["teacher"]
            self.teacher_score_fn = self._megatron_teacher_score
        shape = lambda m: resolve_shape(m.flops_name or m.path)  # noqa: E731
        self.flops = FlopsCounter(shape(cfg.student), shape(cfg.teacher) if cfg.teacher.path else None,
                                  cfg.lora.rank, cfg.lora.targets)
        self.prompts = PromptSource(cfg.data, cfg.run.seed)
        sample = self._sample_reference if step_roles(cfg).sampler is None else self._sample
        # Only the distillation methods use teacher scores in training (rl's eval still does).
        score = self._score if step_roles(cfg).teacher_scores and self.teacher_score_fn is not None else None
        return Components(cfg=cfg, prompts=self.prompts, sample=sample, score=score, reward=self._reward,
                          learner=self.learner, sync=self._sync, evaluate=self._evaluate,
                          checkpoint=self._checkpoint, flops=_FlopsSteps(self.flops, cfg),
                          log=MetricsWriter(self.run_dir, cfg.run.num_steps, cfg.run.quiet),
                          pad_id=int(self.tokenizer.pad_token_id or 0), preempted=lambda: self.preempt.flag)

    # ----- stage callables -------------------------------------------------------------------
    def _encode(self, prompts: List[Prompt]) -> List[List[int]]:
        return [encode_prompt(self.tokenizer, p.text, self.cfg.data.chat_template) for p in prompts]

    def _sample(self, prompts: List[Prompt], *, client=None, temperature=None, samples=None,
                max_new_tokens=None, seed_offset: int = 0) -> List[Rollout]:
        r, cfg = self.cfg.rollout, self.cfg
        if client is None:
            client = self.student_client if method_of(cfg.objective).on_policy else self.teacher_client
        role = "teacher" if client is self.teacher_client else "student"
        call = self._teacher_call if role == "teacher" else self._engine_call
        with self._injected_kill(role if seed_offset == 0 else None):
            rollouts = call(lambda: client.generate(
                self._encode(prompts), samples_per_prompt=samples or r.samples_per_prompt,
                max_new_tokens=max_new_tokens or r.max_new_tokens,
                temperature=r.temperature if temperature is None else temperature,
                top_p=r.top_p, top_k=r.top_k, seed=_sampling_seed(cfg.run.seed, self.prompts.cursor, seed_offset)))
        for ro in rollouts:
            ro.answer = prompts[ro.group_id].answer
        return rollouts

    def _sample_reference(self, prompts: List[Prompt]) -> List[Rollout]:
        eos = self.tokenizer.eos_token_id
        out = []
        for i, (p, ids) in enumerate(zip(prompts, self._encode(prompts))):
            resp = list(self.tokenizer(p.reference, add_special_tokens=False)["input_ids"]) + [eos]
            out.append(Rollout(prompt_ids=ids, response_ids=resp, sampler_logprobs=[0.0] * len(resp),
                               finish_reason="stop", group_id=i, answer=p.answer))
        return out

    def _score(self, rollouts: List[Rollout]) -> None:
        o = self.cfg.objective
        top_k = o.teacher_top_k if o.kl_estimator == "full_vocab" else 0
        with self._injected_kill("teacher"):
            self.teacher_score_fn(rollouts, temperature=o.teacher_temperature, top_k=top_k)
        self.num_scored += 1
        if self.num_scored == int(os.environ.get(FAULT_NAN_TEACHER_ENV, "0")):
            _poison(rollouts[0])

    def _sglang_teacher_score(self, rollouts: List[Rollout], *, temperature: float, top_k: int) -> None:
        self._teacher_call(lambda: self.teacher_client.score(rollouts, temperature=temperature, top_k=top_k))

    def _teacher_call(self, fn: Callable[[], Any]) -> Any:
        """An engine call to the teacher servers from an empty prefix cache
        (engines.flush_teacher_cache): what earlier calls cached moves the last bits of later
        scores, and a restarted or requeued teacher starts empty."""
        from opd_megatron.engines.http import EngineRequestError

        def call() -> Any:
            if self.teacher_servers is not None:
                try:
                    self.teacher_servers.flush_cache()
                except EngineRequestError as exc:
                    raise EngineRequestError(f"{str(exc).splitlines()[0][:300]}; a teacher busy with "
                                             "other runs' requests cannot be flushed: set "
                                             "engines.flush_teacher_cache=false") from exc
            return fn()
        return self._engine_call(call)

    def _megatron_teacher_score(self, rollouts: List[Rollout], *, temperature: float, top_k: int) -> None:
        """The frozen teacher inside Megatron fills the same Rollout fields as SGLang scoring."""
        import torch

        batch = pack_rollouts(rollouts, int(self.tokenizer.pad_token_id or 0))
        logp_BSV = torch.log_softmax(self.frozen_teacher.logits(batch) / temperature, dim=-1)
        for b, r in enumerate(rollouts):
            P, T = len(r.prompt_ids), len(r.response_ids)
            rows_TV = logp_BSV[b, P:P + T]
            ids_T = torch.tensor(r.response_ids, dtype=torch.long)
            r.teacher_logprobs = rows_TV.gather(-1, ids_T[:, None]).squeeze(-1).tolist()
            if top_k:
                vals, idx = rows_TV.topk(min(top_k, rows_TV.shape[-1]), dim=-1)
                r.teacher_topk_ids, r.teacher_topk_logprobs = idx.tolist(), vals.tolist()

    def _reward(self, rollouts: List[Rollout]) -> None:
        for ro in rollouts:
            text = self.tokenizer.decode(ro.response_ids, skip_special_tokens=True)
            ro.reward = 1.0 if ro.answer is not None and is_correct(text, ro.answer) else 0.0

    def _sync(self, version: int) -> None:
        self._engine_call(lambda: self.weight_sync.push(self.learner.hf_state_dict(), version), resync=False)
        self.synced_version = version

    # ----- server failures ---------------------------------------------------------------------
    def _engine_call(self, call, *, resync: bool = True):
        """Run one engine call; when a server of ours died or stopped answering, restart it,
        give a student server the learner's current weights (``resync``; a weight push redoes
        that itself) and call again, at most ``engines.max_restarts`` times. The loop's step is
        not advanced until every call of it succeeded, so no step is lost or done twice."""
        from opd_megatron.engines.http import EngineUnavailable

        self._recover(resync, check_health=False)  # a server seen dead since the last call
        restarts_left = self.cfg.engines.max_restarts
        while True:
            try:
                return call()
            except EngineUnavailable as exc:
                if restarts_left <= 0 or not self._recover(resync, check_health=True):
                    raise
                restarts_left -= 1
                print(f"[opd] engine call failed ({str(exc).splitlines()[0][:200]}); "
                      "server restarted, retrying", flush=True)

    def _recover(self, resync: bool, *, check_health: bool) -> List[str]:
        restarted: List[str] = []
        for role, group in self.groups.items():
            urls = group.restart_failed(timeout_s=self.cfg.engines.startup_timeout_s, check_health=check_health)
            for url in urls:
                print(f"[opd] restarted {role} server {url} (see its log in {self.run_dir / 'logs'})", flush=True)
            self.num_restarts += len(urls)
            restarted += urls
            if urls and role == "student" and resync:
                self.weight_sync.push(self.learner.hf_state_dict(), self.synced_version)
        return restarted

    @contextmanager
    def _injected_kill(self, role: Optional[str]):
        """OPD_FAULT_KILL_SERVER: SIGKILL ``role``'s first launched server 0.1 s into the
        training call of the named step (once), so the request in flight fails."""
        import signal
        import threading

        step = self.prompts.cursor // self.cfg.rollout.prompts_per_step
        group = self.groups.get(role) if role is not None else None
        if self._kill_at.get(role) != step or group is None or not group.processes:
            yield
            return
        del self._kill_at[role]
        proc = group.processes[0]
        timer = threading.Timer(0.1, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            yield
        finally:
            timer.join()

    # ----- evaluation ------------------------------------------------------------------------
    def _accuracy(self, client) -> float:
        e = self.cfg.eval
        prompts = heldout_prompts(self.cfg.data, e.num_prompts)
        rollouts = self._sample(prompts, client=client, temperature=e.temperature, samples=e.samples_per_prompt,
                                max_new_tokens=e.max_new_tokens, seed_offset=-1)
        self._reward(rollouts)
        return sum(ro.reward for ro in rollouts) / len(rollouts)

    def _reverse_kl(self) -> Optional[float]:
        """Per-token reverse KL of the student to the teacher on held-out T=1 samples
        (mean of logp_student - logp_teacher over sampled tokens: an unbiased estimate)."""
        if self.teacher_score_fn is None:
            return None
        prompts = heldout_prompts(self.cfg.data, min(EVAL_KL_PROMPTS, self.cfg.eval.num_prompts))
        rollouts = self._sample(prompts, client=self.student_client, temperature=1.0, samples=1,
                                max_new_tokens=self.cfg.eval.max_new_tokens, seed_offset=-2)
        self.teacher_score_fn(rollouts, temperature=1.0, top_k=0)
        num = sum(sum(r.sampler_logprobs) - sum(r.teacher_logprobs) for r in rollouts)
        den = sum(len(r.response_ids) for r in rollouts)
        return num / max(den, 1)

    def _evaluate(self, step: int) -> Dict[str, Any]:
        if self.synced_version != step:
            self._sync(step)
        out = {"accuracy": self._accuracy(self.student_client), "reverse_kl": self._reverse_kl()}
        if self.cfg.eval.benchmarks:
            from opd_megatron.evaluation.command import client_generate_fn
            from opd_megatron.evaluation.suite import evaluate_benchmarks

            generate = client_generate_fn(self.student_client, self.tokenizer, self.cfg.data.chat_template)
            out.update(evaluate_benchmarks(self.cfg.eval, generate, seed=self.cfg.run.seed))
        return out

    # ----- checkpoints -------------------------------------------------------------------------
    def _checkpoint(self, step: int) -> None:
        extra = {"step": step, "cursor": self.prompts.cursor, "flops": self.flops.state_dict(),
                 "before": self.before, "stage_total_s": dict(self.components.timer.total_s),
                 "num_skipped": self.components.num_skipped}
        target = rundir.checkpoint_path(self.run_dir, step)
        try:
            self.learner.save_checkpoint(target, extra)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            raise _checkpoint_write_error(target, exc, rundir.latest_checkpoint(self.run_dir)) from exc
        rundir.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep)

    def _resume(self, c: Components) -> None:
        ckpt = rundir.latest_checkpoint(self.run_dir) if self.cfg.checkpoint.resume else None
        if ckpt is None:
            return
        extra = self.learner.load_checkpoint(ckpt)
        self.start_step = int(extra["step"])
        self.prompts.seek(int(extra["cursor"]))
        self.flops.load_state_dict(extra["flops"])
        self.before = dict(extra.get("before") or {})
        c.timer.total_s.update(extra.get("stage_total_s") or {})
        c.num_skipped = int(extra.get("num_skipped", 0))
        print(f"[opd] resumed from {ckpt} (step {self.start_step})", flush=True)

    # ----- the run ------------------------------------------------------------------------------
    def execute(self) -> int:
        c = self.components = self._build()
        self.stack.callback(c.log.close)  # stop the live display also when the run fails
        self._resume(c)
        if self.start_step > 0 or self.cfg.engines.student.urls:
            # Servers started elsewhere (or before a requeue) may hold other weights.
            c.sync(self.start_step)
        if not self.before:
            with c.timer.stage("eval"):
                self.before = self._evaluate(0)
                if self.teacher_client is not None:
                    self.before["teacher_accuracy"] = self._accuracy(self.teacher_client)
            c.log.write({"step": 0, **self.before})
        self.step = train(c, self.start_step)
        if self.preempt.flag and self.step < self.cfg.run.num_steps:
            from opd_megatron.errors import EXIT_PREEMPTED

            return EXIT_PREEMPTED
        with c.timer.stage("eval"):
            self.after = self._evaluate(self.step)
        with c.timer.stage("checkpoint"):
            self._checkpoint(self.step)
            if self.cfg.checkpoint.export_hf:
                self.learner.export_hf(self.run_dir / "hf")
        c.log.write({"step": self.step, **self.after, "flops": self.flops.as_dict(), "final": True})
        c.log.close()
        self.completed = True
        return 0

    def summary(self) -> Dict[str, Any]:
        c = self.components
        return {
            "completed": self.completed, "method": self.cfg.objective.method, "steps": self.step,
            "teacher_accuracy": self.before.get("teacher_accuracy"),
            "student_accuracy_before": self.before.get("accuracy"),
            "student_accuracy_after": self.after.get("accuracy"),
            "reverse_kl_before": self.before.get("reverse_kl"),
            "reverse_kl_after": self.after.get("reverse_kl"),
            "flops": self.flops.as_dict() if hasattr(self, "flops") else {},
            "stage_seconds": {k: round(v, 2) for k, v in c.timer.total_s.items()} if c else {},
            "num_skipped_steps": c.num_skipped if c else 0,
            "num_server_restarts": self.num_restarts,
        }


def _checkpoint_write_error(target: Path, exc: BaseException, previous: Optional[Path]):
    """One line: what was not written, why (a full disk is named as such), what is kept."""
    import shutil

    from opd_megatron.errors import RuntimeFailure

    free = shutil.disk_usage(target.parent).free
    needed = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file()) if previous else 0
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
    if getattr(exc, "errno", None) == 28 or free < needed:
        cause = f"the disk is full: {free / 2**20:.1f} MiB free, a checkpoint takes {needed / 2**20:.1f} MiB"
    kept = (f"the previous checkpoint {previous.name} is intact and a rerun resumes from it"
            if previous else "no earlier checkpoint exists")
    return RuntimeFailure(f"checkpoint {target} not written ({cause}); nothing partial was left, {kept}; "
                          "free disk space or lower checkpoint.keep, then rerun the same command")


def _poison(rollout: Rollout) -> None:
    nan = float("nan")
    rollout.teacher_logprobs = [nan] * len(rollout.teacher_logprobs or [])
    if rollout.teacher_topk_logprobs:
        rollout.teacher_topk_logprobs = [[nan] * len(row) for row in rollout.teacher_topk_logprobs]


def _sampling_seed(run_seed: int, cursor: int, purpose: int) -> int:
    """Base seed of one batch of requests (request j uses base + j): a 48-bit hash of the run
    seed, the data cursor and the purpose (training, eval accuracy, eval KL), so batches never
    share seeds and a resumed run draws exactly what the uninterrupted run drew."""
    digest = hashlib.sha256(f"{run_seed}:{cursor}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


class _FlopsSteps:
    """Counts one step's FLOPs by role from the tokens actually processed."""

    def __init__(self, counter: Any, cfg: Config):
        self.counter, self.roles = counter, step_roles(cfg)

    def add_step(self, rollouts: List[Rollout], batch: Any) -> None:
        spans = [(len(r.prompt_ids), len(r.response_ids)) for r in rollouts]
        if self.roles.sampler is not None:
            self.counter.add_sequences(self.roles.sampler, spans)
        if self.roles.teacher_scores:
            # One prefill of each prompt per group (prefix cache), then every response.
            firsts = {r.group_id: len(r.prompt_ids) for r in rollouts}
            self.counter.add_sequences("teacher_scoring", [(0, p) for p in firsts.values()])
            self.counter.add_sequences("teacher_scoring", spans)
        self.counter.add_sequences("learner_train", [(0, p + t) for p, t in spans])

    def as_dict(self) -> Dict[str, float]:
        return self.counter.as_dict()
