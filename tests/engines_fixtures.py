"""Session fixtures of the engine tests (a pytest plugin: ``pytest_plugins`` in the test files).

Servers are session-scoped (startup is ~20-60 s each on 2 cores); the whole engine test set
starts three: student, teacher, and a throwaway one that the failure tests kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from opd_megatron.models.tiny import STUDENT_SHAPE, TEACHER_SHAPE
from tests.engines_helpers import make_model, start_server


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("engine_models")
    return {
        "student": make_model(root / "student", STUDENT_SHAPE, seed=11),
        "student_v2": make_model(root / "student_v2", STUDENT_SHAPE, seed=12),
        "teacher": make_model(root / "teacher", TEACHER_SHAPE, seed=13),
    }


@pytest.fixture(scope="session")
def student_server(engine_models, tmp_path_factory):
    group = start_server("student", engine_models["student"], tmp_path_factory.mktemp("logs"))
    yield group
    group.stop()


@pytest.fixture(scope="session")
def teacher_server(engine_models, tmp_path_factory):
    group = start_server("teacher", engine_models["teacher"], tmp_path_factory.mktemp("logs"))
    yield group
    group.stop()



def restore_student(models: Dict[str, Path], student_server) -> None:
    """The shared student server gets its original weights back (after a run pushed its own)."""
    from opd_megatron.config.schema import EnginesConfig
    from opd_megatron.engines import EngineClient

    EngineClient.from_config([student_server.url], EnginesConfig()).post_each(
        "/update_weights_from_disk", {"model_path": str(models["student"])})
