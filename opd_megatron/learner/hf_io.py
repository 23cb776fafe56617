"""Reading and writing HF model directories (config + safetensors + tokenizer files).

Writes are atomic: everything goes to a sibling temp directory that is fsynced and renamed
into place, so a reader (SGLang's update-from-disk, a resumed run) never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterable, List

import torch

from opd_megatron.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEX = "model.safetensors.index.json"


def load_hf_weights(model_dir: str | Path) -> Dict[str, torch.Tensor]:
    """All tensors of an HF directory: ``model.safetensors`` or a sharded index."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: HF model directory not found")
    index = root / WEIGHT_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (root / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ConfigError(f"{root}: no model.safetensors or {WEIGHT_INDEX}; "
                          "save the model with safetensors (save_pretrained does)")
    out: Dict[str, torch.Tensor] = {}
    for name in files:
        path = root / name
        if not path.is_file():
            raise ConfigError(f"{path}: listed in {WEIGHT_INDEX} but missing")
        out.update(load_file(str(path)))
    return out


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(final: Path) -> Path:
    """A fresh temp directory next to ``final`` (same filesystem, so rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and rename it to ``final`` (an existing ``final`` is replaced)."""
    _fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # this replacement's old copy, and any a kill between the two renames left behind
    for stale in ([old] if old is not None else []) + sorted(final.parent.glob(f".{final.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _side_files(src: Path) -> Iterable[Path]:
    """Tokenizer, generation config, chat template...: every non-weight file but config.json."""
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name != "config.json" and path.name != WEIGHT_INDEX \
                and not path.name.endswith(WEIGHT_SUFFIXES):
            yield path


def save_hf_dir(out_dir: str | Path, weights: Dict[str, torch.Tensor], hf_config: dict,
                source_dirs: List[str | Path], dtype: torch.dtype | None = None) -> Path:
    """Write an HF directory loadable by transformers and SGLang, atomically.

    ``config.json`` is the source's with ``torch_dtype``/``dtype`` set to the saved dtype; the
    tokenizer and other side files are copied from ``source_dirs`` (later ones win: the model
    directory, then a separate tokenizer directory)."""
    from safetensors.torch import save_file

    final = Path(out_dir)
    tmp = temp_sibling(final)
    try:
        tensors = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
                   for k, v in weights.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = dict(hf_config)
        saved = next(iter(tensors.values())).dtype
        cfg["torch_dtype"] = cfg["dtype"] = str(saved).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for source in source_dirs:
            for path in _side_files(Path(source)):
                shutil.copy2(path, tmp / path.name)
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
