"""Every check that can run before a process, server or GPU starts.

``preflight(cfg)`` runs the config-only checks (``opd_megatron.config.validate``) first, then
the ones that read files, ask servers or know the methods and benchmarks: benchmark names and
``eval.benchmark_files``, method rules, the dataset's path, the ``/health`` of servers given by
``engines.<role>.urls``, the models' HF configs (or their ``prepare`` recipes), tp/pp vs
attention heads and layers, the student/teacher tokenizers, then the task (``check_task``:
the dataset's rows, its held-out split, answers for the grader, references for sft, prompt
lengths vs the student's context) and ``objective.teacher_top_k`` vs the vocabulary. Each
raises ConfigError with the dotted key (and the file, line or row), what is allowed and what
was given. ``load_and_validate(recipe, overrides)`` loads and runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from opd_megatron.config import Config, load_config, validate
from opd_megatron.config.schema import RANDOM_PREFIXES, RANDOM_SHAPES, ModelConfig
from opd_megatron.engines.compat import check_eos_token, check_tokenizers_compatible
from opd_megatron.engines.apikey import check_key_source
from opd_megatron.engines.http import health_ok
from opd_megatron.errors import ConfigError
from opd_megatron.methods import method_of, needs_teacher_model, sampled_token_kl, uses_megatron_teacher

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

URL_HEALTH_TIMEOUT_S = 5.0
"""Seconds a server given by ``engines.<role>.urls`` has to answer ``GET /health``."""


def check_benchmarks(cfg: Config) -> None:
    from opd_megatron.evaluation.benchmarks import check_eval_benchmarks

    check_eval_benchmarks(cfg.eval.benchmarks, cfg.eval.benchmark_files)


def check_method(cfg: Config) -> None:
    """The objective's rules that depend on what the method does."""
    from opd_megatron.objective import validate_objective

    o = cfg.objective
    validate_objective(o)
    if o.kl_estimator == "full_vocab" and not method_of(o).distills:
        raise ConfigError(f"objective.kl_estimator: full_vocab applies to opd methods, not {o.method}")
    r = cfg.rollout
    if o.kl_at == "learner" and not sampled_token_kl(o):
        raise ConfigError(f"objective.kl_at: learner changes the sampled-token reverse KL, which method "
                          f"{o.method} with kl_estimator {o.kl_estimator} does not use; leave it at sampler")
    if (r.max_staleness or r.stream_chunks) and uses_megatron_teacher(cfg):
        key = "rollout.max_staleness" if r.max_staleness else "rollout.stream_chunks"
        raise ConfigError(f"{key}: overlapping stages needs the teacher on SGLang servers; the Megatron "
                          f"teacher (objective.teacher_backend=megatron) shares the learner's processes")
    if r.stream_chunks and not (method_of(o).on_policy and method_of(o).distills):
        raise ConfigError(f"rollout.stream_chunks: streams the student's rollouts to the teacher's scoring; "
                          f"method {o.method} has no teacher scoring (use opd or opd+reward, or set it to 0)")


def check_data_file(cfg: Config) -> None:
    """A dataset source has data.path, and a local one exists (its rows: ``check_task``)."""
    from opd_megatron.data.dataset import DATASET_SOURCES, check_path

    if cfg.data.source in DATASET_SOURCES:
        check_path(cfg.data)


def check_task(cfg: Config, student_hf: Optional[dict]) -> None:
    """The run's task builds (opd_megatron.data.tasks.task_of): a dataset's rows read and
    checked (valid JSON, prompt and answer fields, answers the grader reads, references for
    sft on them, data.num_heldout below its distinct prompts), and every prompt fits the
    student's context with room for the response. A hub id (data.source=hf, not a local path)
    is not downloaded here: the run checks its rows when it loads them."""
    from opd_megatron.data.dataset import DATASET_SOURCES, is_local
    from opd_megatron.data.tasks import DatasetTask, task_of

    if cfg.data.source in DATASET_SOURCES and not is_local(cfg.data):
        return
    task = task_of(cfg)
    if not isinstance(task, DatasetTask) or student_hf is None \
            or not isinstance(student_hf.get("max_position_embeddings"), int):
        return
    context = student_hf["max_position_embeddings"]
    tokenizer = _student_tokenizer(cfg)
    for key, value, part in (("rollout.max_new_tokens", cfg.rollout.max_new_tokens, task.train_rows),
                             ("eval.max_new_tokens", cfg.eval.max_new_tokens, task.heldout_rows)):
        check_prompt_lengths(part, tokenizer, cfg.data.chat_template, context - value,
                             f"the student's context ({context}, max_position_embeddings) minus {key} ({value})")


PROMPT_BYTES_SLACK = 8
"""Tokens a prompt may take beyond its UTF-8 bytes (and the template's own tokens) before it
is tokenized to be measured: byte-level BPE, char and sentencepiece tokenizers give at most
about one token per byte, so only prompts near the limit are tokenized."""


def check_prompt_lengths(rows: Sequence[Any], tokenizer: Any, chat_template: str, limit: int, why: str) -> None:
    """Every row's prompt (through the chat template) is at most ``limit`` tokens."""
    from opd_megatron.data import encode_prompt

    if not rows:
        return
    overhead = len(encode_prompt(tokenizer, "", chat_template))
    for row in rows:
        text = row.prompt.text
        if len(text.encode("utf-8")) + overhead + PROMPT_BYTES_SLACK <= limit:
            continue
        n = len(encode_prompt(tokenizer, text, chat_template))
        if n > limit:
            raise ConfigError(f"data.path: the prompt of {row.where} is {n} tokens, over the {max(limit, 0)} "
                              f"left by {why}; shorten or drop the row, or lower the max_new_tokens")


def _student_tokenizer(cfg: Config) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.student.tokenizer or cfg.student.path)
    tokenizer.model_max_length = 1 << 62  # measuring long prompts is the point: no length warning
    return tokenizer


def check_teacher_top_k(cfg: Config, student_hf: Optional[dict]) -> None:
    """``objective.teacher_top_k`` asks for at most the tokenizer's tokens (len(tokenizer):
    the rows of a padded embedding beyond it are no tokens)."""
    k = cfg.objective.teacher_top_k
    if k <= 0 or student_hf is None:
        return
    num_tokens = len(_student_tokenizer(cfg))
    if k > num_tokens:
        padded = student_hf["vocab_size"]
        note = f"; vocab_size {padded} counts padded rows, no tokens" if padded > num_tokens else ""
        raise ConfigError(f"objective.teacher_top_k: {k} exceeds the vocabulary ({num_tokens} tokens in the "
                          f"student's tokenizer{note}); set it to at most {num_tokens}")


def check_urls(cfg: Config) -> None:
    """Servers started elsewhere (engines.<role>.urls) must answer /health before we start."""
    for role in ("student", "teacher"):
        for i, url in enumerate(getattr(cfg.engines, role).urls):
            if not str(url).startswith(("http://", "https://")):
                raise ConfigError(f"engines.{role}.urls[{i}]: '{url}' is not an http(s) URL")
            if not health_ok(str(url), timeout_s=URL_HEALTH_TIMEOUT_S):
                raise ConfigError(f"engines.{role}.urls[{i}]: no healthy server at {url} "
                                  f"(GET /health failed); start it or remove the URL to launch one")


def read_hf_config(model: ModelConfig, role: str, absent_ok: bool = False) -> Optional[Dict[str, Any]]:
    """The model's config.json, or None when it will be built by ``prepare``."""
    if not model.path:
        raise ConfigError(f"{role}.path: missing; set it to an HF model directory "
                          f"(config.json + weights + tokenizer)")
    path = Path(model.path)
    reason = unsafe_target(model, role)
    if reason:
        raise ConfigError(reason)
    if not path.exists():
        if model.prepare:
            check_prepare(model, role)
            return None
        if absent_ok and model.flops_name:
            return None
        if absent_ok:
            raise ConfigError(f"{role}.flops_name: {role}.path {path} is not here and there is no "
                              f"{role}.flops_name to plan from; set it (e.g. qwen3-8b; opd flops -h lists them)")
        how = (f"`opd fetch RECIPE --models` puts {model.hub_id} in the hub cache" if model.hub_id
               else f"download it, or set {role}.prepare to a recipe that builds it")
        raise ConfigError(f"{role}.path: model directory not found: {path} ({how})")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{role}.path: {cfg_file} not found; not an HF model directory")
    try:
        hf = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{role}.path: {cfg_file} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{role}.path: {cfg_file} holds a JSON {type(hf).__name__}, not an object; "
                          f"not an HF model config")
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
    rows = embedding_rows(path, role)
    if rows is not None and rows != hf["vocab_size"]:
        raise ConfigError(f"{role}.path: {cfg_file} says vocab_size {hf['vocab_size']} but the "
                          f"embedding in {path} has {rows} rows; the config and weights are from "
                          f"different models")
    return hf


def embedding_rows(path: Path, role: str) -> Optional[int]:
    """Rows of ``model.embed_tokens.weight``, read from safetensors headers only (no weights
    loaded); None when the weights are not safetensors or name no such tensor."""
    for f in sorted(path.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size < 1 << 28:
                    raise ValueError
                header = json.loads(fh.read(size))
        except (OSError, ValueError, UnicodeDecodeError):
            raise ConfigError(f"{role}.path: {f} is not a readable safetensors file") from None
        entry = header.get("model.embed_tokens.weight")
        if isinstance(entry, dict) and entry.get("shape"):
            return int(entry["shape"][0])
    return None


STAMP = ".opd-prepare.json"
"""What ``prepare`` (opd_megatron/run/prepare.py) writes into each directory it builds."""


def stamp_of(path: Path) -> Optional[dict]:
    """What ``prepare`` wrote into a directory it built (None: it did not build it)."""
    try:
        stamp = json.loads((Path(path) / STAMP).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return stamp if isinstance(stamp, dict) else None


def unsafe_target(model: ModelConfig, role: str) -> Optional[str]:
    """Why ``prepare`` must not build at ``model.path`` (None: it may): it builds only where
    nothing is, into an empty directory, or over a directory it built itself."""
    path = Path(model.path)
    if not model.prepare or not path.exists():
        return None
    if path.is_dir() and (stamp_of(path) is not None or not any(path.iterdir())):
        return None
    return (f"{role}.path: {path} holds files {role}.prepare did not build (no {STAMP}), and it "
            f"would be rebuilt there; set {role}.prepare=null to use it as it is, or point "
            f"{role}.path at a new directory")


_PREPARING: List[str] = []
"""The prepare recipes being checked, outermost first (a recipe that needs itself is a cycle)."""


def check_prepare(model: ModelConfig, role: str) -> None:
    """``prepare`` is a recipe file (preflighted too, recursively), tiny-random:<shape> or
    tiny-random-bpe:<shape>."""
    spec = str(model.prepare)
    prefix = next((p for p in RANDOM_PREFIXES if spec.startswith(p)), None)
    if prefix is not None:
        if spec[len(prefix):] not in RANDOM_SHAPES:
            raise ConfigError(f"{role}.prepare: '{spec}' names no tiny shape; use "
                              f"{' or '.join(prefix + s for s in RANDOM_SHAPES)}")
        return
    if not Path(spec).is_file():
        raise ConfigError(f"{role}.prepare: recipe file not found: {spec} (paths are relative to "
                          f"the directory opd runs in)")
    key = str(Path(spec).resolve())
    if key in _PREPARING:
        raise ConfigError(f"{role}.prepare: {spec} needs itself to be built first (a prepare cycle through "
                          f"{' -> '.join(_PREPARING + [key])}); point one of them at a model that exists")
    _PREPARING.append(key)
    try:
        preflight(load_config(spec))
    finally:
        _PREPARING.pop()


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


def check_tokenizers(cfg: Config, student_hf: Optional[dict], teacher_hf: Optional[dict]) -> None:
    """Student and teacher share one tokenizer (vocabulary, special tokens, eos/pad ids, and
    the chat template's output when prompts use it; ``opd_megatron.engines.compat``) and
    ``data.eos_token`` is a token of both. Skipped for a model
    that ``prepare`` builds later."""
    eos_token = cfg.data.eos_token
    if student_hf is None:
        return
    if teacher_hf is None:  # no teacher model, or one that prepare builds later
        check_eos_token(cfg.student, "student", eos_token)
        return
    # Output layers of other padded widths (Qwen3 151,936 vs Qwen2.5 152,064 rows) are fine
    # once the tokenizers match: sampling, teacher top-k and the learner's KL use the
    # tokenizer's real ids only (opd_megatron.engines.client, learner.forward).
    check_tokenizers_compatible(cfg.student, cfg.teacher, eos_token=eos_token,
                                use_chat_template=cfg.data.chat_template == "tokenizer")


def preflight(cfg: Config, absent_ok: bool = False) -> Dict[str, Optional[dict]]:
    """Run every check; returns the readable HF configs by role (None where prepared later).
    ``absent_ok`` (``opd validate``, the plan on paper): a model directory that is not here
    but names its ``flops_name`` is planned from that shape, and the checks that need its
    files (tokenizers, prompt lengths, top-k vs vocabulary) are skipped (``absent_models``)."""
    validate(cfg)
    check_benchmarks(cfg)
    check_method(cfg)
    check_data_file(cfg)
    check_key_source(cfg.engines)
    check_urls(cfg)
    student_hf = read_hf_config(cfg.student, "student", absent_ok)
    teacher_hf = None
    if needs_teacher_model(cfg):
        teacher_hf = read_hf_config(cfg.teacher, "teacher", absent_ok)
    if not absent_ok:  # the plan on paper says it instead (opd validate)
        check_hub(cfg)
    if student_hf is not None:
        check_model_parallel(student_hf, cfg, "student")
    if teacher_hf is not None and cfg.objective.teacher_backend == "megatron":
        check_model_parallel(teacher_hf, cfg, "teacher")
    check_tokenizers(cfg, student_hf, teacher_hf)
    check_teacher_top_k(cfg, student_hf)
    check_task(cfg, student_hf)
    return {"student": student_hf, "teacher": teacher_hf}


def resolve_config(recipe: str, overrides: Sequence[str] = (), announce: bool = True) -> Config:
    """The recipe with overrides, then what the hub cache holds (read with the hub offline) and,
    under ``run.rehearse``, the rehearsal's replacements: the config every step of a run uses
    (``opd run``, and a Slurm job's servers). ``announce`` prints each replaced key."""
    from opd_megatron.run.fetch import cache_changes, cache_dir
    from opd_megatron.run.rehearse import as_overrides, describe, rehearsal_changes

    say = _announce if announce else (lambda lines: None)
    cfg = load_config(recipe, overrides)
    added: List[str] = []
    cached = cache_changes(cfg)
    if cached:
        say([*describe(cached, "cache"), f"[cache] read from {cache_dir(cfg)} (opd fetch)"])
        added += as_overrides(cached)
        cfg = load_config(recipe, [*overrides, *added])
    if cfg.run.rehearse:
        changes = rehearsal_changes(cfg)
        say(describe(changes, "rehearse"))
        cfg = load_config(recipe, [*overrides, *added, *as_overrides(changes)])
    return cfg


def load_and_validate(recipe: str, overrides: Sequence[str] = (),
                      absent_ok: bool = False) -> Tuple[Config, Dict[str, Optional[dict]]]:
    """Load a recipe with overrides (``resolve_config``) and run every pre-flight check.
    Raises ConfigError."""
    cfg = resolve_config(recipe, overrides)
    hf = preflight(cfg, absent_ok)
    return cfg, hf


def load_recipe_command(prog: str, description: str, argv: Optional[List[str]]) -> Tuple[Config, str, List[str]]:
    """``PROG RECIPE [key=value ...]`` (``opd continual``, ``opd compare``): the parsed arguments
    loaded and checked by ``load_and_validate``; returns (config, recipe, overrides)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg, _ = load_and_validate(args.recipe, args.overrides)
    return cfg, args.recipe, list(args.overrides)


def _announce(lines: Sequence[str]) -> None:
    if lines and int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(lines), flush=True)


def check_hub(cfg: Config) -> None:
    """What the run still names on the hub (not cached, not local) is reachable from here."""
    from opd_megatron.run.fetch import check_reachable

    problem = check_reachable(cfg)
    if problem:
        raise ConfigError(problem)


def absent_models(cfg: Config) -> List[str]:
    """One line per model directory that is not here and is planned from its flops_name."""
    roles = ("student", "teacher") if needs_teacher_model(cfg) else ("student",)
    return [f"{role}.path: {m.path} is not here; shapes from {role}.flops_name {m.flops_name} (the shape "
            f"table); tokenizer, chat-template and prompt-length checks skipped"
            for role in roles for m in [getattr(cfg, role)]
            if m.path and not Path(m.path).exists() and not m.prepare and m.flops_name]
