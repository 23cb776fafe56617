"""A local stand-in of the hub for `opd fetch` (no internet here): a directory of hub repo
clones, ``ROOT/<repo id>/``, laid out as the real repos are read by ``datasets.load_dataset``
(split names from the file names, GPQA's configs from its README's YAML), filled with the
shipped samples in each dataset's public schema, and a model repo (the tiny BPE teacher)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets/data/math-tiny"

DATASET_FILES: Dict[str, str] = {
    "zwhe99/DeepMath-103K": "data/train.jsonl",
    "HuggingFaceH4/aime_2024": "data/train.jsonl",
    "math-ai/aime25": "test.jsonl",
    "HuggingFaceH4/MATH-500": "test.jsonl",
}
MODEL_REPO = "Qwen/Qwen3-8B"
"""The stand-in's model repo: the shipped tiny BPE teacher under a real repo id."""


def make_hub_standin(root: Path, train_rows: int = 1000) -> Path:
    """The stand-in at ``root`` (returned)."""
    lines = (SAMPLES / "train.jsonl").read_text().splitlines()[:train_rows]
    bench = (SAMPLES / "aime24.jsonl").read_text()
    for repo, rel in DATASET_FILES.items():
        path = root / repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n" if repo.startswith("zwhe99") else bench)
    gpqa = root / "Idavidrein/gpqa"
    gpqa.mkdir(parents=True)
    shutil.copy(SAMPLES / "gpqa_diamond.jsonl", gpqa / "gpqa_diamond.jsonl")
    rows = [json.loads(x) for x in (SAMPLES / "gpqa_diamond.jsonl").read_text().splitlines()]
    (gpqa / "gpqa_main.jsonl").write_text("".join(json.dumps({**r, "Question": "main " + r["Question"]}) + "\n"
                                                  for r in rows))
    (gpqa / "README.md").write_text("---\nconfigs:\n- config_name: gpqa_diamond\n  data_files: gpqa_diamond.jsonl\n"
                                    "- config_name: gpqa_main\n  data_files: gpqa_main.jsonl\n---\n# stand-in\n")
    shutil.copytree(REPO / "assets/tiny-bpe/teacher", root / MODEL_REPO)
    return root


def fill_cache(hub: Path, cache: Path, recipe: str = "recipes/opd-qwen3-32b-to-8b-base-4n8g.yaml") -> Path:
    """``cache`` filled with what ``recipe`` names on the hub (the 32B recipe's: DeepMath and
    every benchmark), fetched from the stand-in at ``hub`` as ``opd fetch`` does."""
    from opd_megatron.config import load_config
    from opd_megatron.run.fetch import MirrorHub, fetch

    fetch(load_config(str(REPO / recipe), [f"run.hub_cache={cache}"]), MirrorHub(hub))
    return cache
