"""Every check that can run before a process, server or GPU starts.

``preflight(cfg)`` runs the config-only checks (``opd_megatron.config.validate``) first, then
the ones that read files, ask servers or know the methods and benchmarks: benchmark names,
method rules, the jsonl prompt file, the ``/health`` of servers given by ``engines.<role>.urls``,
the models' HF configs (or their ``prepare`` recipes), tp/pp vs attention heads and layers,
and the student/teacher vocabulary. Each raises ConfigError with the dotted key, what is
allowed and what was given. ``load_and_validate(recipe, overrides)`` loads and runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from opd_megatron.config import Config, load_config, validate
from opd_megatron.config.schema import RANDOM_PREFIX, RANDOM_SHAPES, ModelConfig
from opd_megatron.engines.http import health_ok
from opd_megatron.errors import ConfigError
from opd_megatron.methods import method_of, needs_teacher_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

URL_HEALTH_TIMEOUT_S = 5.0
"""Seconds a server given by ``engines.<role>.urls`` has to answer ``GET /health``."""


def check_benchmarks(cfg: Config) -> None:
    from opd_megatron.evaluation.benchmarks import BENCHMARKS

    for name in cfg.eval.benchmarks:
        if name not in BENCHMARKS:
            raise ConfigError(f"eval.benchmarks: '{name}' is not a benchmark; choose from: {', '.join(BENCHMARKS)}")


def check_method(cfg: Config) -> None:
    """The objective's rules that depend on what the method does."""
    from opd_megatron.objective import validate_objective

    o = cfg.objective
    validate_objective(o)
    if o.kl_estimator == "full_vocab" and not method_of(o).distills:
        raise ConfigError(f"objective.kl_estimator: full_vocab applies to opd methods, not {o.method}")


def check_data_file(cfg: Config) -> None:
    if cfg.data.source in ("jsonl",) and not (cfg.data.path and Path(cfg.data.path).is_file()):
        raise ConfigError(f"data.path: prompt file not found: {cfg.data.path!r} (needed by data.source=jsonl)")


def check_urls(cfg: Config) -> None:
    """Servers started elsewhere (engines.<role>.urls) must answer /health before we start."""
    for role in ("student", "teacher"):
        for i, url in enumerate(getattr(cfg.engines, role).urls):
            if not str(url).startswith(("http://", "https://")):
                raise ConfigError(f"engines.{role}.urls[{i}]: '{url}' is not an http(s) URL")
            if not health_ok(str(url), timeout_s=URL_HEALTH_TIMEOUT_S):
                raise ConfigError(f"engines.{role}.urls[{i}]: no healthy server at {url} "
                                  f"(GET /health failed); start it or remove the URL to launch one")


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


def check_prepare(model: ModelConfig, role: str) -> None:
    """``prepare`` is a recipe file (preflighted too, recursively) or tiny-random:<shape>."""
    spec = str(model.prepare)
    if spec.startswith(RANDOM_PREFIX):
        if spec[len(RANDOM_PREFIX):] not in RANDOM_SHAPES:
            raise ConfigError(f"{role}.prepare: '{spec}' names no tiny shape; use "
                              f"{' or '.join(RANDOM_PREFIX + s for s in RANDOM_SHAPES)}")
        return
    if not Path(spec).is_file():
        raise ConfigError(f"{role}.prepare: recipe file not found: {spec} (paths are relative to "
                          f"the directory opd runs in)")
    preflight(load_config(spec))


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


def preflight(cfg: Config) -> Dict[str, Optional[dict]]:
    """Run every check; returns the readable HF configs by role (None where prepared later)."""
    validate(cfg)
    check_benchmarks(cfg)
    check_method(cfg)
    check_data_file(cfg)
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


def load_and_validate(recipe: str, overrides: Sequence[str] = ()) -> Tuple[Config, Dict[str, Optional[dict]]]:
    """Load a recipe with overrides and run every pre-flight check. Raises ConfigError."""
    cfg = load_config(recipe, overrides)
    hf = preflight(cfg)
    return cfg, hf
