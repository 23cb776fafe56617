"""Placeholders for kernels the CPU stand-in does not implement.

A placeholder can be imported, stored and have attributes read (SGLang reads some at import
time, e.g. ``scalar_types.uint4b8``), but calling it raises ``NotImplementedError`` naming the
op, so a code path that needs a real kernel fails loudly.
"""

from __future__ import annotations

from typing import Any, Callable


class MissingKernel:
    """Stands for ``sgl_kernel.<name>``; raises when called."""

    __slots__ = ("_qualname",)

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{self._qualname} is not available: the installed sgl_kernel is opd-megatron's "
            "CPU stand-in (shims/sgl_kernel). This code path needs the real sglang-kernel "
            "(GPU) build."
        )

    def __getattr__(self, name: str) -> "MissingKernel":
        if name.startswith("__"):
            raise AttributeError(name)
        return MissingKernel(f"{self._qualname}.{name}")

    def __repr__(self) -> str:
        return f"<MissingKernel {self._qualname}>"


def missing_module_getattr(module_name: str) -> Callable[[str], MissingKernel]:
    """A module-level ``__getattr__`` (PEP 562) that returns placeholders for unknown names."""

    def __getattr__(name: str) -> MissingKernel:
        if name.startswith("__"):
            raise AttributeError(name)
        return MissingKernel(f"{module_name}.{name}")

    return __getattr__
