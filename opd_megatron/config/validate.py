"""Every check that can run before a process, server or GPU starts.

``validate(cfg)`` raises ConfigError with the dotted key, what is allowed and what was given.
Checks: choices, ranges, model/tokenizer files, tp vs attention/KV heads, pp vs layers,
tp*pp*dp vs the learner's devices, roles vs the cluster's nodes, student/teacher vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from opd_megatron.config.schema import CHOICES, LORA_TARGETS, Config, ModelConfig
from opd_megatron.errors import ConfigError
from opd_megatron.methods import method_of, needs_teacher_model  # moves out with the preflight split

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


GENERATED_SOURCES = ("arithmetic", "instruct", "midtrain")
"""Sources generated from the seed, with the arithmetic held-out split for in-loop eval."""


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# (dotted key, predicate, what is allowed). Checked in order; the first failure is reported.
RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("run.name", lambda v: bool(v) and "/" not in v and v not in (".", ".."), "a non-empty name without '/'"),
    ("run.seed", lambda v: v >= 0, ">= 0"),
    ("run.num_steps", lambda v: v >= 1, ">= 1"),
    ("run.log_interval", lambda v: v >= 1, ">= 1"),
    ("data.num_heldout", lambda v: v >= 1, ">= 1"),
    ("data.min_ops", lambda v: v >= 1, ">= 1"),
    ("data.num_sft_samples", lambda v: v >= 1, ">= 1"),
    ("data.num_facts", lambda v: 1 <= v <= 900, "in [1, 900] (3-digit keys)"),
    ("data.facts_per_document", lambda v: v >= 1, ">= 1"),
    ("data.chat_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("data.replay_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("continual.rounds", lambda v: v >= 1, ">= 1"),
    ("continual.midtrain_steps", lambda v: v >= 1, ">= 1"),
    ("continual.midtrain_lr", lambda v: v > 0, "> 0"),
    ("continual.opd_steps", lambda v: v >= 1, ">= 1"),
    ("continual.eval_facts", lambda v: v >= 1, ">= 1"),
    ("continual.eval_instructions", lambda v: v >= 1, ">= 1"),
    ("rollout.prompts_per_step", lambda v: v >= 1, ">= 1"),
    ("rollout.samples_per_prompt", lambda v: v >= 1, ">= 1"),
    ("rollout.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("rollout.temperature", lambda v: v > 0, "> 0 (on-policy training needs sampling logprobs)"),
    ("rollout.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("rollout.top_k", lambda v: v == -1 or v >= 1, "-1 (off) or >= 1"),
    ("objective.kl_coef", lambda v: v >= 0, ">= 0"),
    ("objective.discount", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("objective.reward_weight", lambda v: v >= 0, ">= 0"),
    ("objective.jsd_beta", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("objective.teacher_top_k", lambda v: v >= 0, ">= 0"),
    ("objective.is_cap", lambda v: v >= 1, ">= 1"),
    ("objective.clip_eps", lambda v: 0 < v < 1, "in (0, 1)"),
    ("objective.teacher_temperature", lambda v: v > 0, "> 0 (0 is not a distribution to score under)"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.min_lr", lambda v: v >= 0, ">= 0"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", lambda v: v > 0, "> 0"),
    ("optim.grad_clip", lambda v: v >= 0, ">= 0 (0 disables)"),
    ("parallel.tp", lambda v: v >= 1, ">= 1"),
    ("parallel.pp", lambda v: v >= 1, ">= 1"),
    ("parallel.dp", lambda v: v >= 1, ">= 1"),
    ("parallel.microbatch_tokens", lambda v: v >= 1, ">= 1"),
    ("engines.student.num_servers", lambda v: v >= 1, ">= 1"),
    ("engines.teacher.num_servers", lambda v: v >= 1, ">= 1"),
    ("engines.student.tp", lambda v: v >= 1, ">= 1"),
    ("engines.teacher.tp", lambda v: v >= 1, ">= 1"),
    ("engines.student.mem_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("engines.teacher.mem_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("engines.student.max_total_tokens", lambda v: v >= 256, ">= 256"),
    ("engines.teacher.max_total_tokens", lambda v: v >= 256, ">= 256"),
    ("engines.base_port", lambda v: 1024 <= v <= 65000, "in [1024, 65000]"),
    ("engines.startup_timeout_s", lambda v: v > 0, "> 0"),
    ("engines.request_timeout_s", lambda v: v > 0, "> 0"),
    ("engines.max_retries", lambda v: v >= 0, ">= 0"),
    ("engines.max_restarts", lambda v: v >= 0, ">= 0"),
    ("engines.max_concurrency", lambda v: v >= 1, ">= 1"),
    ("eval.interval", lambda v: v >= 0, ">= 0 (0: only before and after)"),
    ("eval.num_prompts", lambda v: v >= 1, ">= 1"),
    ("eval.samples_per_prompt", lambda v: v >= 1, ">= 1"),
    ("eval.temperature", lambda v: v >= 0, ">= 0 (0: greedy)"),
    ("eval.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("eval.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("checkpoint.interval", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("checkpoint.keep", lambda v: v >= 1, ">= 1"),
    ("cluster.num_nodes", lambda v: v >= 1, ">= 1"),
    ("cluster.gpus_per_node", lambda v: v >= 0, ">= 0"),
    ("cluster.learner_nodes", lambda v: v >= 1, ">= 1"),
    ("cluster.student_nodes", lambda v: v >= 0, ">= 0"),
    ("cluster.teacher_nodes", lambda v: v >= 0, ">= 0"),
    ("cluster.signal_s", lambda v: v >= 0, ">= 0"),
]


def check_choices(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not allowed; choose one of: {', '.join(allowed)}")
    from opd_megatron.evaluation.benchmarks import BENCHMARKS

    for name in cfg.eval.benchmarks:
        if name not in BENCHMARKS:
            raise ConfigError(f"eval.benchmarks: '{name}' is not a benchmark; choose from: {', '.join(BENCHMARKS)}")


def check_ranges(cfg: Config) -> None:
    for key, ok, allowed in RANGES:
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


def read_hf_config(model: ModelConfig, role: str) -> Optional[Dict[str, Any]]:
    """The model's config.json, or None when it will be built by ``prepare``."""
    if not model.path:
        raise ConfigError(f"{role}.path: missing; set it to an HF model directory "
                          f"(config.json + weights + tokenizer)")
    path = Path(model.path)
    if not path.exists():
        if model.prepare:
            check_prepare(model, role)
            return None
        raise ConfigError(f"{role}.path: model directory not found: {path} "
                          f"(download it or set {role}.prepare to a recipe that builds it)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{role}.path: {cfg_file} not found; not an HF model directory")
    try:
        hf = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{role}.path: {cfg_file} is not valid JSON ({e.__class__.__name__})") from None
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ConfigError(f"{role}.path: no *.safetensors weights in {path}")
    tok_dir = Path(model.tokenizer) if model.tokenizer else path
    if not any((tok_dir / f).is_file() for f in TOKENIZER_FILES):
        key = f"{role}.tokenizer" if model.tokenizer else f"{role}.path"
        raise ConfigError(f"{key}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tok_dir}; "
                          f"set {role}.tokenizer to the tokenizer directory")
    for k in ("num_attention_heads", "num_hidden_layers", "vocab_size"):
        if not isinstance(hf.get(k), int):
            raise ConfigError(f"{role}.path: {cfg_file} lacks integer '{k}'")
    return hf


RANDOM_PREFIX = "tiny-random:"
RANDOM_SHAPES = ("teacher", "student")


def check_prepare(model: ModelConfig, role: str) -> None:
    """``prepare`` is a recipe file (validated too, recursively) or tiny-random:<shape>."""
    spec = str(model.prepare)
    if spec.startswith(RANDOM_PREFIX):
        if spec[len(RANDOM_PREFIX):] not in RANDOM_SHAPES:
            raise ConfigError(f"{role}.prepare: '{spec}' names no tiny shape; use "
                              f"{' or '.join(RANDOM_PREFIX + s for s in RANDOM_SHAPES)}")
        return
    if not Path(spec).is_file():
        raise ConfigError(f"{role}.prepare: recipe file not found: {spec} (paths are relative to "
                          f"the directory opd runs in)")
    from opd_megatron.config.load import load_config

    validate(load_config(spec))


def check_model_parallel(hf: Dict[str, Any], cfg: Config, role: str) -> None:
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    layers = hf["num_hidden_layers"]
    if heads % tp or kv % tp:
        raise ConfigError(f"parallel.tp: {tp} must divide the {role}'s attention heads ({heads}) "
                          f"and KV heads ({kv})")
    if layers % pp:
        raise ConfigError(f"parallel.pp: {pp} must divide the {role}'s {layers} layers")
    for eng_role in ("student", "teacher"):
        etp = getattr(cfg.engines, eng_role).tp
        if eng_role == role and (heads % etp or kv % etp):
            raise ConfigError(f"engines.{role}.tp: {etp} must divide the {role}'s attention heads "
                              f"({heads}) and KV heads ({kv})")


def _tokenizer_vocab(model: ModelConfig) -> Optional[Dict[str, int]]:
    tok_dir = Path(model.tokenizer or model.path)
    f = tok_dir / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{f}: tokenizer.json is not valid JSON") from None
    vocab = dict(data.get("model", {}).get("vocab", {}) or {})
    for t in data.get("added_tokens", []) or []:
        vocab[t["content"]] = t["id"]
    return vocab


def check_vocab_match(cfg: Config, student_hf: Optional[dict], teacher_hf: Optional[dict]) -> None:
    if student_hf is None or teacher_hf is None:
        return
    if student_hf["vocab_size"] != teacher_hf["vocab_size"]:
        raise ConfigError(f"teacher.path: vocab_size {teacher_hf['vocab_size']} differs from the "
                          f"student's {student_hf['vocab_size']}; OPD needs one shared tokenizer")
    sv, tv = _tokenizer_vocab(cfg.student), _tokenizer_vocab(cfg.teacher)
    if sv is not None and tv is not None and sv != tv:
        diff = sorted(set(sv.items()) ^ set(tv.items()))[:3]
        raise ConfigError(f"teacher.tokenizer: token ids differ from the student's "
                          f"(e.g. {diff}); use the same tokenizer for both")


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
    elif cfg.engines.weight_sync == "distributed":
        raise ConfigError("engines.weight_sync: 'distributed' needs NCCL (GPUs); use tensor or disk on CPU")
    needed = c.learner_nodes + c.student_nodes + c.teacher_nodes
    if needed > c.num_nodes:
        raise ConfigError(f"cluster.num_nodes: roles need {needed} nodes (learner {c.learner_nodes} "
                          f"+ student {c.student_nodes} + teacher {c.teacher_nodes}), have {c.num_nodes}")


def check_objective(cfg: Config) -> None:
    from opd_megatron.objective import validate_objective

    o = cfg.objective
    validate_objective(o)
    if o.kl_estimator == "full_vocab" and o.teacher_top_k < 1 and o.teacher_backend != "megatron":
        raise ConfigError("objective.teacher_top_k: must be >= 1 for kl_estimator full_vocab with an "
                          "SGLang teacher (set it to the vocab size for the exact KL)")
    if o.kl_estimator == "full_vocab" and not method_of(o).distills:
        raise ConfigError(f"objective.kl_estimator: full_vocab applies to opd methods, not {o.method}")
    if cfg.data.source in ("jsonl",) and not (cfg.data.path and Path(cfg.data.path).is_file()):
        raise ConfigError(f"data.path: prompt file not found: {cfg.data.path!r} (needed by data.source=jsonl)")
    if cfg.eval.num_prompts > cfg.data.num_heldout and cfg.data.source in GENERATED_SOURCES:
        raise ConfigError(f"eval.num_prompts: {cfg.eval.num_prompts} exceeds data.num_heldout "
                          f"({cfg.data.num_heldout})")


def check_lora(cfg: Config) -> None:
    """LoRA settings of the student (``lora.rank`` 0: off, nothing else is checked)."""
    lora = cfg.lora
    if lora.rank < 0:
        raise ConfigError(f"lora.rank: must be >= 0 (0: off) (got {lora.rank})")
    if lora.rank == 0:
        return
    if not lora.alpha > 0:
        raise ConfigError(f"lora.alpha: must be > 0 (got {lora.alpha}); the update is scaled by alpha/rank")
    bad = [t for t in lora.targets if t not in LORA_TARGETS]
    if bad or not lora.targets:
        raise ConfigError(f"lora.targets: {bad or 'empty'} not allowed; "
                          f"choose from: {', '.join(LORA_TARGETS)}")
    if len(set(lora.targets)) != len(lora.targets):
        raise ConfigError(f"lora.targets: {lora.targets} lists a module twice; list each once")


def check_urls(cfg: Config) -> None:
    """Servers started elsewhere (engines.<role>.urls) must answer /health before we start."""
    import urllib.error
    import urllib.request

    for role in ("student", "teacher"):
        for i, url in enumerate(getattr(cfg.engines, role).urls):
            if not str(url).startswith(("http://", "https://")):
                raise ConfigError(f"engines.{role}.urls[{i}]: '{url}' is not an http(s) URL")
            try:
                with urllib.request.urlopen(f"{str(url).rstrip('/')}/health", timeout=5) as resp:
                    ok = resp.status == 200
            except (urllib.error.URLError, OSError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"engines.{role}.urls[{i}]: no healthy server at {url} "
                                  f"(GET /health failed); start it or remove the URL to launch one")


def validate(cfg: Config) -> Dict[str, Optional[dict]]:
    """Run every check; returns the readable HF configs by role (None where prepared later)."""
    check_choices(cfg)
    check_ranges(cfg)
    check_objective(cfg)
    check_cluster(cfg)
    check_lora(cfg)
    check_urls(cfg)
    student_hf = read_hf_config(cfg.student, "student")
    teacher_hf = None
    if needs_teacher_model(cfg):
        teacher_hf = read_hf_config(cfg.teacher, "teacher")
    if student_hf is not None:
        check_model_parallel(student_hf, cfg, "student")
    if teacher_hf is not None and cfg.objective.teacher_backend == "megatron":
        check_model_parallel(teacher_hf, cfg, "teacher")
    check_vocab_match(cfg, student_hf, teacher_hf)
    return {"student": student_hf, "teacher": teacher_hf}
