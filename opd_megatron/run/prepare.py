"""Build model checkpoints a recipe needs but does not have (the tiny CPU models).

``model.prepare`` is either ``tiny-random:<teacher|student>`` (a randomly initialised tiny
Qwen3 + the char tokenizer) or a recipe whose run exports its final student in HF format.
Results are cached at ``model.path`` and keyed by a content hash of the resolved prepare
recipe, so a changed recipe rebuilds and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from opd_megatron.config.load import read_recipe_layers
from opd_megatron.config.schema import RANDOM_PREFIX, ModelConfig
from opd_megatron.run.preflight import load_and_validate

STAMP = ".opd-prepare.json"


def prepare_hash(spec: str) -> str:
    """Content hash of what would be built: the spec and, for recipes, the recipe's own YAML
    (and its base), recursively with the recipes of the models it needs. Schema defaults are
    not hashed, so adding a schema field does not invalidate shipped checkpoints."""
    text = spec
    if not spec.startswith(RANDOM_PREFIX):
        text += json.dumps(read_recipe_layers(spec), sort_keys=True)
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
    stamp = path / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("hash") == prepare_hash(model.prepare)


def ensure_model(model: ModelConfig, role: str, run_recipe: Callable[[str], Path]) -> bool:
    """Build ``model.path`` if needed; returns True when something was built.

    ``run_recipe(recipe) -> hf_dir`` runs a prepare recipe and returns its exported model.
    """
    if is_prepared(model) or not model.prepare:
        return False
    from opd_megatron.models import tiny

    spec, dst = model.prepare, Path(model.path)
    digest = prepare_hash(spec)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec.startswith(RANDOM_PREFIX):
        shape = {"teacher": tiny.TEACHER_SHAPE, "student": tiny.STUDENT_SHAPE}[spec[len(RANDOM_PREFIX):]]
        tiny.save_random_model(tmp, shape, seed=int(digest[:8], 16) % (2**31))
    else:
        print(f"[prepare] {role}: building {dst} with {spec} (cached afterwards)", flush=True)
        shutil.copytree(run_recipe(spec), tmp)
    (tmp / STAMP).write_text(json.dumps({"hash": digest, "prepare": spec}, indent=1))
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return True
