"""The checks of a config that need nothing but the config: no file, no server, no package above
``opd_megatron.config``.

``validate(cfg)`` raises ConfigError with the dotted key, what is allowed and what was given.
Checks: choices and ranges (both written at the field in ``schema``), then the rules across
fields: max_ops >= min_ops, lr >= min_lr, replay sets, objective settings, tp*pp*dp vs the
learner's devices, roles vs the cluster's nodes, LoRA. What reads model files, asks servers or
depends on the method lives in ``opd_megatron.run.preflight``, which runs this first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Tuple

from opd_megatron.config.schema import CHOICES, LORA_TARGETS, RANGES, Config
from opd_megatron.errors import ConfigError


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def check_choices(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not allowed; choose one of: {', '.join(allowed)}")


def _numbers(node: Any, prefix: str = "") -> Iterator[Tuple[str, float]]:
    """Every float in the config (dataclass fields, lists, dicts) with its dotted key."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _numbers(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{prefix}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{prefix}[{i}]")
    elif isinstance(node, float):
        yield prefix, node


def check_finite(cfg: Config) -> None:
    """No inf or nan anywhere: every number in a config is meant finite (an ``inf`` learning rate
    would pass ``> 0`` and skip every step; an ``inf`` timeout would wait forever)."""
    for key, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number (got {value})")


def check_ranges(cfg: Config) -> None:
    """Each field's range (schema order; the first failure is reported), then ordered pairs."""
    check_finite(cfg)
    for key, allowed, ok in RANGES:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}: must be {allowed} (got {value!r})")
    pairs = [("data.max_ops", "data.min_ops"), ("optim.lr", "optim.min_lr")]
    for hi, lo in pairs:
        if _get(cfg, hi) < _get(cfg, lo):
            raise ConfigError(f"{hi}: must be >= {lo} (got {_get(cfg, hi)} < {_get(cfg, lo)})")
    d = cfg.data
    if d.source == "midtrain" and d.replay_ratio > 0:
        if not d.replay_facts_seeds:
            raise ConfigError("data.replay_ratio: replaying needs the earlier fact sets; set "
                              "data.replay_facts_seeds (e.g. [1]) or data.replay_ratio=0")
        if d.facts_seed in d.replay_facts_seeds:
            raise ConfigError(f"data.replay_facts_seeds: holds data.facts_seed {d.facts_seed}, "
                              "the set being learnt; list only earlier sets")


def check_objective(cfg: Config) -> None:
    o = cfg.objective
    if o.kl_estimator == "full_vocab" and o.teacher_top_k < 1 and o.teacher_backend != "megatron":
        raise ConfigError("objective.teacher_top_k: must be >= 1 for kl_estimator full_vocab with an "
                          "SGLang teacher (set it to the vocab size for the exact KL)")
    r = cfg.rollout
    if r.stream_chunks > r.prompts_per_step:
        raise ConfigError(f"rollout.stream_chunks: {r.stream_chunks} batches exceed rollout.prompts_per_step "
                          f"({r.prompts_per_step}); use at most one batch per prompt")
    if 0 < cfg.data.num_heldout < cfg.eval.num_prompts:  # 0: no in-loop accuracy, nothing to fit
        raise ConfigError(f"eval.num_prompts: {cfg.eval.num_prompts} exceeds data.num_heldout "
                          f"({cfg.data.num_heldout}), the held-out prompts it is drawn from")
    if cfg.eval.stop_at_accuracy and not (cfg.eval.interval and cfg.data.num_heldout):
        raise ConfigError("eval.stop_at_accuracy: needs the in-loop accuracy, every eval.interval steps; "
                          "set eval.interval >= 1 and data.num_heldout >= 1, or stop_at_accuracy=0")


def check_cluster(cfg: Config) -> None:
    c, p = cfg.cluster, cfg.parallel
    world = p.tp * p.pp * p.dp
    if c.gpus_per_node > 0:
        devices = c.learner_nodes * c.gpus_per_node
        if world != devices:
            raise ConfigError(f"parallel: tp*pp*dp = {p.tp}*{p.pp}*{p.dp} = {world} must equal the "
                              f"learner's GPUs (cluster.learner_nodes*gpus_per_node = {devices})")
        for role in ("student", "teacher"):
            etp = getattr(cfg.engines, role).tp
            if etp > c.gpus_per_node:
                raise ConfigError(f"engines.{role}.tp: {etp} exceeds cluster.gpus_per_node "
                                  f"({c.gpus_per_node})")
    needed = c.learner_nodes + c.student_nodes + c.teacher_nodes
    if needed > c.num_nodes:
        raise ConfigError(f"cluster.num_nodes: roles need {needed} nodes (learner {c.learner_nodes} "
                          f"+ student {c.student_nodes} + teacher {c.teacher_nodes}), have {c.num_nodes}")


SERVER_OWNED_FLAGS = ("--host", "--port", "--api-key", "--admin-api-key", "--config")
"""SGLang flags opd-megatron sets (engines.host, engines.base_port, the API key: a ``--config``
file could carry any of them): never in ``extra_args``."""


def check_extra_args(cfg: Config) -> None:
    for role in ("student", "teacher"):
        for arg in getattr(cfg.engines, role).extra_args:
            flag = str(arg).split("=", 1)[0]
            if flag in SERVER_OWNED_FLAGS:
                raise ConfigError(f"engines.{role}.extra_args: {flag} is set by opd-megatron (engines.host, "
                                  f"engines.base_port, the API key); remove it from extra_args")


def check_lora(cfg: Config) -> None:
    """LoRA settings of the student (``lora.rank`` 0: off, nothing else is checked; its range is
    in the schema)."""
    lora = cfg.lora
    if lora.rank <= 0:
        return
    if not lora.alpha > 0:
        raise ConfigError(f"lora.alpha: must be > 0 (got {lora.alpha}); the update is scaled by alpha/rank")
    bad = [t for t in lora.targets if t not in LORA_TARGETS]
    if bad or not lora.targets:
        raise ConfigError(f"lora.targets: {bad or 'empty'} not allowed; "
                          f"choose from: {', '.join(LORA_TARGETS)}")
    if len(set(lora.targets)) != len(lora.targets):
        raise ConfigError(f"lora.targets: {lora.targets} lists a module twice; list each once")


def validate(cfg: Config) -> None:
    """Run every check that needs only the config; raises ConfigError at the first failure."""
    check_choices(cfg)
    check_ranges(cfg)
    check_objective(cfg)
    check_cluster(cfg)
    check_extra_args(cfg)
    check_lora(cfg)
