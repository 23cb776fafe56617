"""Write the versions file of a container image (read by opd_megatron.report.environment into report.md).

    python launch/image_versions.py /opt/opd/versions.json   # the Dockerfile runs this at build time

Records what the image holds, looked up from the installed distributions (never typed in by
hand): Python, the pinned packages, the CUDA toolkit the base image declares, and the base
image name passed in OPD_BASE_IMAGE.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

PACKAGES = ("opd-megatron", "torch", "megatron-core", "transformer-engine", "transformer_engine_torch", "sglang",
            "sglang-router", "flashinfer-python", "transformers", "tokenizers", "omegaconf", "nvidia-nccl-cu13")


def installed(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect() -> Dict[str, object]:
    return {"python": platform.python_version(), "base_image": os.environ.get("OPD_BASE_IMAGE"),
            "cuda": os.environ.get("CUDA_VERSION"), "packages": {p: installed(p) for p in PACKAGES}}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python launch/image_versions.py OUT.json", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(collect(), indent=1, sort_keys=True) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
