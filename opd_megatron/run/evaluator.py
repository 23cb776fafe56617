"""In-loop evaluation on the student servers: accuracy on the task's held-out prompts (graded
by the task), reverse KL to the teacher on them, and ``eval.benchmarks`` (local files from
``eval.benchmark_files``); the teacher's own accuracy once before training. A task without
held-out prompts (data.num_heldout=0) is evaluated on eval.benchmarks only."""

from __future__ import annotations

from typing import Any, Dict, Optional

from opd_megatron.config.schema import Config
from opd_megatron.data import Task
from opd_megatron.run.stages import Stages

EVAL_KL_PROMPTS = 200
"""Held-out prompts whose T=1 student samples measure the reverse KL to the teacher."""


class Evaluator:
    def __init__(self, cfg: Config, stages: Stages, tokenizer: Any, task: Task):
        self.cfg, self.stages, self.tokenizer, self.task = cfg, stages, tokenizer, task

    def accuracy(self, client) -> Optional[float]:
        """Held-out accuracy of ``client``'s samples (None: the task holds nothing out)."""
        e = self.cfg.eval
        prompts = self.task.heldout(e.num_prompts)
        if not prompts:
            return None
        rollouts = self.stages.sample(prompts, client=client, temperature=e.temperature,
                                      samples=e.samples_per_prompt, max_new_tokens=e.max_new_tokens,
                                      seed_offset=-1)
        self.stages.reward(rollouts)
        return sum(ro.reward for ro in rollouts) / len(rollouts)

    def teacher_accuracy(self) -> Optional[float]:
        """The teacher servers' held-out accuracy (None without teacher servers or held-out prompts)."""
        teacher = self.stages.servers.teacher
        return self.accuracy(teacher) if teacher is not None else None

    def reverse_kl(self) -> Optional[float]:
        """Per-token reverse KL of the student to the teacher on held-out T=1 samples
        (mean of logp_student - logp_teacher over sampled tokens: an unbiased estimate)."""
        prompts = self.task.heldout(min(EVAL_KL_PROMPTS, self.cfg.eval.num_prompts))
        if not self.stages.can_score or not prompts:
            return None
        rollouts = self.stages.sample(prompts, client=self.stages.servers.student, temperature=1.0, samples=1,
                                      max_new_tokens=self.cfg.eval.max_new_tokens, seed_offset=-2)
        self.stages.teacher_score(rollouts, temperature=1.0, top_k=0)
        num = sum(sum(r.sampler_logprobs) - sum(r.teacher_logprobs) for r in rollouts)
        den = sum(len(r.response_ids) for r in rollouts)
        return num / max(den, 1)

    def evaluate(self, step: int) -> Dict[str, Any]:
        """The student at ``step`` (its weights pushed first if the servers lag)."""
        servers = self.stages.servers
        if servers.synced_version != step:
            self.stages.sync(step)
        out: Dict[str, Any] = {}
        if self.task.num_heldout:
            out["accuracy"] = self.accuracy(servers.student)
        out["reverse_kl"] = self.reverse_kl()
        if self.cfg.eval.benchmarks:
            from opd_megatron.evaluation import client_generate_fn, evaluate_benchmarks
            from opd_megatron.evaluation.suite import PROTOCOLS

            protocol = PROTOCOLS.get(self.cfg.eval.preset)
            generate = client_generate_fn(servers.student, self.tokenizer, self.cfg.data.chat_template,
                                          stop_token_ids=self.stages.stop_token_ids,
                                          thinking=protocol.thinking if protocol else None)
            out.update(evaluate_benchmarks(self.cfg.eval, generate, seed=self.cfg.run.seed,
                                           data_files=self.cfg.eval.benchmark_files))
        return out
