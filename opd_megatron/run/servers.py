"""The run's SGLang servers and clients: launch, teacher cache flush, restart-and-retry, weight push.

Every engine call of a run goes through ``Servers.call``: when a server of ours died or stopped
answering, it is restarted, a student server gets the learner's current weights again, and the
call is retried, at most ``engines.max_restarts`` times. The loop's step is not advanced until
every call of it succeeded, so no step is lost or done twice.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from opd_megatron.config.schema import Config, ModelConfig
from opd_megatron.methods import needs_teacher_servers


def output_rows(model: ModelConfig) -> Optional[int]:
    """Rows of a model's output layer (``config.json`` ``vocab_size``, padded past the
    tokenizer in Qwen3), or None for a model whose servers someone else runs."""
    path = Path(model.path) / "config.json"
    return int(json.loads(path.read_text())["vocab_size"]) if path.is_file() else None


class Servers:
    def __init__(self, cfg: Config, run_dir: Path, stack: ExitStack, vocab_size: int):
        from opd_megatron.config.layout import server_ports
        from opd_megatron.engines import EngineClient, launch_engines, make_weight_sync
        from opd_megatron.engines.launcher import resolve_device

        self.cfg, self.log_dir = cfg, run_dir / "logs"
        self._loop_thread = threading.get_ident()
        self.synced_version = 0  # servers start from the checkpoint the learner starts from
        self.num_restarts = 0
        self.weights: Callable[[], Dict[str, Any]] = dict
        """The learner's HF state dict now (set once the learner is built)."""
        teacher = cfg.teacher if needs_teacher_servers(cfg) else None
        groups = self.groups = launch_engines(cfg.student, teacher, cfg.engines, self.log_dir, seed=cfg.run.seed)
        for group in groups.values():
            stack.callback(group.stop)
        e = cfg.engines
        self.student = EngineClient.from_config(groups["student"].request_urls, e, full_vocab_size=vocab_size,
                                                logits_width=output_rows(cfg.student))
        self.teacher = (EngineClient.from_config(groups["teacher"].request_urls, e, full_vocab_size=vocab_size,
                                                 logits_width=output_rows(teacher))
                        if teacher else None)
        self._teacher_servers = (EngineClient.from_config(groups["teacher"].server_urls, e)
                                 if teacher and e.flush_teacher_cache else None)
        # distributed: rank 0 of the learner hosts the group's rendezvous on the port after
        # MASTER_PORT (config.layout); under torchrun at MASTER_ADDR, the learner's first node.
        self.weight_sync = make_weight_sync(
            e, groups["student"].server_urls, base_model_dir=cfg.student.path,
            staging_dir=run_dir / "weight_sync", master_address=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=server_ports(e, teacher_servers=teacher is not None).weight_sync,
            on_gpu=resolve_device(e) == "cuda")
        stack.callback(self.weight_sync.close)

    @property
    def external(self) -> bool:
        """Student servers started elsewhere (engines.student.urls) may hold other weights."""
        return bool(self.cfg.engines.student.urls)

    def first_pid(self, role: str) -> Optional[int]:
        """PID of the role's first launched server (for fault injection), None if none is ours."""
        group = self.groups.get(role)
        return group.processes[0].pid if group is not None and group.processes else None

    def push(self, version: int) -> None:
        """Push the learner's weights to every student server as ``version``."""
        self.call(lambda: self.weight_sync.push(self.weights(), version), resync=False)
        self.synced_version = version

    def teacher_call(self, fn: Callable[[], Any]) -> Any:
        """An engine call to the teacher servers from an empty prefix cache
        (engines.flush_teacher_cache): what earlier calls cached moves the last bits of later
        scores, and a restarted or requeued teacher starts empty."""
        from opd_megatron.engines.http import EngineRequestError

        def call() -> Any:
            if self._teacher_servers is not None:
                try:
                    self._teacher_servers.flush_cache()
                except EngineRequestError as exc:
                    raise EngineRequestError(f"{str(exc).splitlines()[0][:300]}; a teacher busy with "
                                             "other runs' requests cannot be flushed: set "
                                             "engines.flush_teacher_cache=false") from exc
            return fn()
        return self.call(call)

    async def aflush_teacher(self, index: int) -> None:
        """Inside a teacher_call-like stream: empty the prefix cache of the ``index``-th teacher
        request URL's server (every server behind a router), when engines.flush_teacher_cache."""
        if self._teacher_servers is None:
            return
        servers = self._teacher_servers
        await (servers.only(index) if self.teacher is not None and self.teacher.urls == servers.urls
               else servers).aflush_cache()

    def call(self, fn: Callable[[], Any], *, resync: bool = True) -> Any:
        """Run one engine call, restarting dead servers and retrying (see the module docstring);
        ``resync``: give a restarted student server the learner's weights (a push redoes that itself)."""
        from opd_megatron.engines.http import EngineUnavailable

        # Off the loop's thread (an overlapped batch, rollout.max_staleness=1) nothing calls the
        # learner: a restarted student server is not resynced there, its rollouts then fail the
        # weight-version check, and the loop samples that batch again itself.
        resync = resync and threading.get_ident() == self._loop_thread
        self._recover(resync, check_health=False)  # a server seen dead since the last call
        restarts_left = self.cfg.engines.max_restarts
        while True:
            try:
                return fn()
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
                print(f"[opd] restarted {role} server {url} (see its log in {self.log_dir})", flush=True)
            self.num_restarts += len(urls)
            restarted += urls
            if urls and role == "student" and resync:
                self.weight_sync.push(self.weights(), self.synced_version)
        return restarted
