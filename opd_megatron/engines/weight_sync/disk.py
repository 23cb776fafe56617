"""Weight sync through an HF directory on a shared filesystem (``/update_weights_from_disk``).

Works across hosts when the servers see the same filesystem; the slowest transport but the
simplest to reason about (the pushed weights are a normal checkpoint one can inspect).
``push`` writes ``{staging_dir}/v{version}`` (safetensors + the base model's config and
tokenizer files), atomically via a temporary directory, then asks every server to load it.
Older staged versions beyond ``keep`` are deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

import torch

from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.weight_sync.base import Timer, post_all_checked

_COPIED_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")


class DiskSync:
    """``WeightSync`` over ``/update_weights_from_disk``."""

    def __init__(self, client: EngineClient, *, base_model_dir: str | os.PathLike,
                 staging_dir: str | os.PathLike, keep: int = 1) -> None:
        self.client = client
        self.base_model_dir = Path(base_model_dir)
        """Where config.json and the tokenizer files come from."""
        self.staging_dir = Path(staging_dir)
        self.keep = keep

    def write_hf_dir(self, hf_state_dict: Mapping[str, torch.Tensor], version: int) -> Path:
        from safetensors.torch import save_file

        final = self.staging_dir / f"v{version}"
        tmp = self.staging_dir / f".v{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for src in self.base_model_dir.iterdir():
            if src.is_file() and src.suffix in _COPIED_SUFFIXES and "index" not in src.name:
                shutil.copy2(src, tmp / src.name)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in hf_state_dict.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def push_dir(self, hf_dir: str | os.PathLike, version: int) -> float:
        """Load an existing HF directory (e.g. ``Learner.export_hf``'s) as ``version``."""
        with Timer() as timer:
            payload = {"model_path": str(hf_dir), "weight_version": str(version),
                       "flush_cache": True}
            post_all_checked(self.client, "/update_weights_from_disk", payload)
        return timer.elapsed_s

    def push(self, hf_state_dict: Mapping[str, torch.Tensor], version: int) -> float:
        with Timer() as timer:
            hf_dir = self.write_hf_dir(hf_state_dict, version)
            self.push_dir(hf_dir, version)
            self._prune(version)
        return timer.elapsed_s

    def _prune(self, current: int) -> None:
        staged = sorted((int(p.name[1:]), p) for p in self.staging_dir.glob("v*")
                        if p.name[1:].isdigit())
        for ver, path in staged[:-self.keep] if self.keep > 0 else []:
            if ver != current:
                shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        pass
