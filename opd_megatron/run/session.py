"""One run's live objects, wired into ``loop.Components``: the tokenizer, the servers
(run/servers.py), the learner side (every rank builds it: run/spmd.py), the step's stages
(run/stages.py), the evaluator (run/evaluator.py) and the run state (run/state.py), over the
run's task (opd_megatron.data.tasks: its prompts, reward and held-out prompts).

Kept apart from the loop so the loop reads top to bottom and this file holds only the wiring.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from opd_megatron.config.schema import Config
from opd_megatron.data import task_of
from opd_megatron.methods import method_of, step_roles
from opd_megatron.run import loop
from opd_megatron.run.evaluator import Evaluator
from opd_megatron.run.logs import MetricsWriter
from opd_megatron.run.rehearse import stop_step
from opd_megatron.run.servers import Servers
from opd_megatron.run.spmd import Collective, build_learner_side, stop_followers, world_size
from opd_megatron.run.stages import Stages
from opd_megatron.run.state import RunState


def training_reward(cfg: Config, stages: Stages) -> Optional[Callable]:
    """The step's reward stage: the task's grade of every training rollout for the methods whose
    loss uses a reward (rl, opd+reward); None for opd and sft (the eval accuracy still grades)."""
    return stages.reward if method_of(cfg.objective).uses_reward else None


class Session:
    def __init__(self, cfg: Config, run_dir: Path, stack: ExitStack, preempt: Any):
        self.cfg, self.run_dir, self.stack, self.preempt = cfg, run_dir, stack, preempt
        self.servers: Optional[Servers] = None
        self.state: Optional[RunState] = None
        self.components: Optional[loop.Components] = None

    def _build(self) -> loop.Components:
        from transformers import AutoTokenizer

        from opd_megatron.plan.flops import FlopsCounter, StepFlops, resolve_shape

        cfg = self.cfg
        tokenizer = AutoTokenizer.from_pretrained(cfg.student.tokenizer or cfg.student.path)
        task = task_of(cfg)  # before any server: a hub dataset's rows are checked as they load
        servers = self.servers = Servers(cfg, self.run_dir, self.stack, vocab_size=len(tokenizer))
        built = build_learner_side(cfg)  # initialises torch.distributed under torchrun
        if world_size() > 1:
            self.stack.callback(stop_followers)
            built = {role: Collective(obj, role) for role, obj in built.items()}
        learner = built["learner"]
        servers.weights = learner.hf_state_dict
        prompts = task.prompts
        stages = Stages(cfg, tokenizer, servers, prompts, frozen_teacher=built.get("teacher"), grade=task.reward)
        evaluator = Evaluator(cfg, stages, tokenizer, task)
        shape = lambda m: resolve_shape(m.flops_name or m.path)  # noqa: E731
        flops = FlopsCounter(shape(cfg.student), shape(cfg.teacher) if cfg.teacher.path else None,
                             cfg.lora.rank, cfg.lora.targets)
        self.state = RunState(cfg, self.run_dir, learner, prompts, flops)
        roles = step_roles(cfg)
        # Only the distillation methods use teacher scores in training (rl's eval still does).
        return loop.Components(
            cfg=cfg, prompts=prompts, sample=stages.sample_reference if roles.sampler is None else stages.sample,
            score=stages.score if roles.teacher_scores and stages.can_score else None,
            stream=stages.sample_and_score if cfg.rollout.stream_chunks else None,
            reward=training_reward(cfg, stages),
            learner=learner, sync=stages.sync, evaluate=evaluator.evaluate,
            teacher_accuracy=evaluator.teacher_accuracy, state=self.state, flops=StepFlops(flops, roles),
            log=MetricsWriter(self.run_dir, cfg.run.num_steps, cfg.run.quiet), export_dir=self.run_dir / "hf",
            external_servers=servers.external, pad_id=stages.pad_id, preempted=lambda: self.preempt.flag,
            stop_after=stop_step(cfg))

    def execute(self) -> int:
        c = self.components = self._build()
        self.stack.callback(c.log.close)  # stop the live display also when the run fails
        return loop.run(c)

    def summary(self) -> Dict[str, Any]:
        restarts = self.servers.num_restarts if self.servers is not None else 0
        if self.state is None:  # failed while building
            return {"completed": False, "method": self.cfg.objective.method, "steps": 0,
                    **{k: None for k in ("teacher_accuracy", "student_accuracy_before", "student_accuracy_after",
                                         "reverse_kl_before", "reverse_kl_after")},
                    "flops": {}, "stage_seconds": {}, "num_skipped_steps": 0, "num_server_restarts": restarts}
        return self.state.summary(self.components, restarts)
