"""Make PyPI's torchvision importable next to a CPU-only torch. CPU test machines only.

Why: SGLang 0.5.23 imports ``torchvision.transforms`` at module level even for text models
(``sglang.srt.configs`` -> ``nano_nemotron_vl`` -> ``multimodal.internvl_utils``), so the server
cannot start without torchvision. PyPI only has CUDA-linked torchvision wheels for Linux; on
torch ``+cpu`` their ``_C.so`` cannot load (it needs libcudart / libtorch_cuda). torchvision
tolerates that for most ops, but ``torchvision/_meta_registrations.py`` unconditionally calls
``torch.library.register_fake("torchvision::nms")`` (and ``qnms``), which raises
``RuntimeError: operator torchvision::nms does not exist``. That error breaks ``import
torchvision`` and with it ``from transformers import Qwen3ForCausalLM`` (transformers imports
torchvision whenever it is installed).

What this does: just before ``torchvision`` is first imported, define the schemas of those two
operators (no kernels). Then ``import torchvision`` succeeds; actually *calling* ``nms`` still
fails loudly with torchvision's own "Couldn't load custom C++ ops" error. Nothing else changes.

It is activated by ``opd_torchvision_cpu_ops.pth`` (installed into site-packages), which only
puts a finder on ``sys.meta_path``; torch is imported only when torchvision is. On a GPU
machine install the matching real torchvision instead and never this package.
"""

from __future__ import annotations

import importlib.abc
import sys

# Schemas as torchvision's C++ library declares them (torchvision/csrc/ops/nms.cpp, qnms).
_MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY_REFS: list = []  # a torch.library.Library un-registers its ops when collected


def _op_exists(qualname: str) -> bool:
    import torch

    try:
        torch._C._get_schema(qualname, "")
        return True
    except RuntimeError:
        return False


def define_missing_ops() -> bool:
    """Declare torchvision's fake-registered ops if nothing defined them. True if it did."""
    import torch

    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return False  # a GPU torch loads torchvision's real _C; never shadow it
    todo = [s for s in _MISSING_OP_SCHEMAS if not _op_exists("torchvision::" + s.split("(")[0])]
    if not todo:
        return False
    lib = torch.library.Library("torchvision", "DEF")
    for schema in todo:
        lib.define(schema)
    _LIBRARY_REFS.append(lib)
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs ``define_missing_ops`` once, when ``torchvision`` is first looked up."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        define_missing_ops()
        return None  # the normal finders then import the real torchvision


def install() -> None:
    """Called from the .pth file at start-up; cheap (no torch import)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
