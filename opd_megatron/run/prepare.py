"""Build model checkpoints a recipe needs but does not have (the tiny CPU models).

``model.prepare`` is ``tiny-random:<teacher|student>`` (a randomly initialised tiny Qwen3 +
the char tokenizer), ``tiny-random-bpe:<teacher|student>`` (the same with the Qwen3-like
byte-level BPE tokenizer learnt from the generated math task, opd_megatron.models.tiny_bpe) or
a recipe whose run exports its final student in HF format.
Results are cached at ``model.path`` and keyed by a content hash of the resolved prepare
recipe, so a changed recipe rebuilds and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, List

from opd_megatron.config.load import read_recipe_layers
from opd_megatron.config.schema import RANDOM_BPE_PREFIX, RANDOM_PREFIX, RANDOM_PREFIXES, ModelConfig
from opd_megatron.errors import ConfigError
from opd_megatron.run.preflight import STAMP, load_and_validate, stamp_of, unsafe_target

BPE_CORPUS_SEED = 20251202
BPE_CORPUS_ROWS = 3000
"""The BPE tokenizer is learnt from the questions and solutions of these generated math rows."""


def bpe_training_text() -> List[str]:
    """Text the tiny BPE tokenizer is learnt from: questions and reference solutions of the
    generated math task (opd_megatron.data.mathgen), in a fixed order."""
    from opd_megatron.data import mathgen

    return [str(r[k]) for r in mathgen.rows(BPE_CORPUS_SEED, BPE_CORPUS_ROWS)
            for k in ("question", "r1_solution_1")]


def _bpe_recipe_text() -> str:
    """What the BPE tokenizer is built from besides the corpus rows (a changed template,
    filler or vocabulary size rebuilds the cached models)."""
    from opd_megatron.models import tiny_bpe

    return json.dumps([BPE_CORPUS_SEED, BPE_CORPUS_ROWS, tiny_bpe.BPE_VOCAB_SIZE, tiny_bpe.FILLER,
                       tiny_bpe.CHAT_TEMPLATE, tiny_bpe.MAX_POSITIONS, tiny_bpe.MIN_PADDED_ROWS])


def prepare_hash(spec: str) -> str:
    """Content hash of what would be built: the spec and, for recipes, the recipe's own YAML
    (and its base), recursively with the recipes of the models it needs. Schema defaults are
    not hashed, so adding a schema field does not invalidate shipped checkpoints."""
    text = spec
    if spec.startswith(RANDOM_BPE_PREFIX):
        text += _bpe_recipe_text()
    elif not spec.startswith(RANDOM_PREFIXES):
        *bases, (top, data) = read_recipe_layers(spec)
        # a base by its path from the recipe, as the recipe names it: not where this checkout is
        layers = [[os.path.relpath(src, Path(top).parent), layer] for src, layer in bases] + [[top, data]]
        text += json.dumps(layers, sort_keys=True)
        cfg, _ = load_and_validate(spec)
        for role in (cfg.student, cfg.teacher):
            if role.prepare:
                text += prepare_hash(role.prepare)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_prepared(model: ModelConfig) -> bool:
    path = Path(model.path)
    if not path.exists():
        return False
    if not model.prepare:
        return True
    stamp = stamp_of(path)
    return stamp is not None and stamp.get("hash") == prepare_hash(model.prepare)


PREPARE_RUN = "prepare-run"
"""Beside a checkpoint built by a recipe: that run's record (its curve: opd compare's SFT ladder)."""
RUN_RECORD = ("metrics.jsonl", "summary.json", "config.yaml", "environment.json")


def keep_run_record(run_dir: Path, dst: Path) -> None:
    """Copy the run's metrics, summary, resolved config and environment to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in RUN_RECORD:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dst / name)


def ensure_model(model: ModelConfig, role: str, run_recipe: Callable[[str], Path]) -> bool:
    """Build ``model.path`` if needed; returns True when something was built.

    ``run_recipe(recipe) -> hf_dir`` runs a prepare recipe and returns its exported model. The
    build goes to a fresh temporary directory beside ``model.path`` and is renamed into place
    whole; what was at ``model.path`` is replaced only when ``prepare`` built it (or it is empty).
    """
    if is_prepared(model) or not model.prepare:
        return False
    reason = unsafe_target(model, role)
    if reason:
        raise ConfigError(reason)
    from opd_megatron.models import tiny, tiny_bpe

    spec, dst = model.prepare, Path(model.path)
    digest = prepare_hash(spec)
    seed = int(digest[:8], 16) % (2**31)
    from opd_megatron.learner.hf_io import commit_dir, temp_sibling

    tmp = temp_sibling(dst)
    try:
        if spec.startswith(RANDOM_BPE_PREFIX):
            tiny_bpe.save_random_bpe_model(tmp, tiny.SHAPES[spec[len(RANDOM_BPE_PREFIX):]], seed, bpe_training_text())
        elif spec.startswith(RANDOM_PREFIX):
            tiny.save_random_model(tmp, tiny.SHAPES[spec[len(RANDOM_PREFIX):]], seed=seed)
        else:
            print(f"[prepare] {role}: building {dst} with {spec} (cached afterwards)", flush=True)
            hf_dir = run_recipe(spec)
            shutil.copytree(hf_dir, tmp, dirs_exist_ok=True)
            keep_run_record(hf_dir.parent, tmp / PREPARE_RUN)
        (tmp / STAMP).write_text(json.dumps({"hash": digest, "prepare": spec}, indent=1))
        commit_dir(tmp, dst)  # replaces what is there: built by prepare or empty (unsafe_target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True
