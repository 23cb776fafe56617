"""Shared fixtures: tiny HF checkpoints (random weights) made once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The shared SGLang servers (student, teacher, ...) of the engine and loop tests: one start each.
pytest_plugins = ["tests.engines_fixtures"]

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TIMING_KEYS = {"stage_seconds", "tokens_per_s"}
"""The metrics.jsonl fields that are wall times, left out where two runs are compared."""


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_same_run(a, b, tol: float = 1e-4):
    """Two runs' untimed records: the same lines and fields, every count equal, every float to ``tol``."""
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float) and isinstance(vb, float):
                assert va == pytest.approx(vb, rel=tol, abs=tol), (ra["step"], key)
            else:
                assert va == vb, (ra["step"], key)
os.environ.setdefault("PYTHONHASHSEED", "0")
# No hub cache a developer filled leaks into the tests (opd_megatron/run/fetch.py); tests that
# need one make their own (qwen3_hub_cache, tests/test_fetch.py). Never created.
os.environ["OPD_HUB_CACHE"] = f"/tmp/opd-tests-no-hub-cache-{os.getpid()}"


def cannot_run(why: str) -> None:
    """A test of a real component that cannot run here: skipped on a developer's machine, a
    failure in CI (``CI=true``), where every real component must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """{'teacher': dir, 'student': dir}: random tiny Qwen3 checkpoints with the char tokenizer."""
    from opd_megatron.models.tiny import STUDENT_SHAPE, TEACHER_SHAPE, save_random_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {"teacher": str(save_random_model(root / "teacher", TEACHER_SHAPE, seed=1)),
            "student": str(save_random_model(root / "student", STUDENT_SHAPE, seed=2))}


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-like byte-level BPE tokenizer (opd_megatron.models.tiny_bpe: ChatML,
    thinking template, eos <|im_end|>), saved once: tokenizer.json, tokenizer_config.json,
    chat_template.jinja."""
    from opd_megatron.models.tiny_bpe import build_tokenizer
    from opd_megatron.run.prepare import bpe_training_text

    out = tmp_path_factory.mktemp("bpe-tokenizer")
    build_tokenizer(bpe_training_text()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen3_hub_cache(tmp_path_factory) -> Path:
    """A hub cache holding the Qwen3 recipes' dataset and benchmarks, fetched from the local
    hub stand-in (tests/hub_standin.py): what `opd fetch` leaves on a cluster's shared disk."""
    from tests.hub_standin import fill_cache, make_hub_standin

    root = tmp_path_factory.mktemp("qwen3-hub")
    return fill_cache(make_hub_standin(root / "hub"), root / "cache")

