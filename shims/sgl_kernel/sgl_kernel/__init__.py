"""CPU-only stand-in for SGLang's ``sgl_kernel`` package. Never install it on a GPU machine.

Why it exists: SGLang 0.5.23 imports ``sgl_kernel`` (its compiled kernel package) at module
level in ~15 modules even when it runs with ``--device cpu``, and the CPU build of that package
is not published on PyPI (the PyPI wheel needs libcuda). Without *some* ``sgl_kernel`` the
server cannot even import. On CPU without AMX, SGLang then uses its torch-native attention and
layers for Qwen3, so almost none of the kernels are actually called.

What it provides:
- ``assign_req_to_token_pool_cpu``: the one op the CPU scheduler really calls (it writes the
  KV-cache slots of each request into the request-to-token table); a plain torch version.
- every other name (``sgl_kernel.X``, ``sgl_kernel.sub.X``) resolves lazily to a
  :class:`MissingKernel` that raises ``NotImplementedError`` naming the op when called, so a
  code path that does need a real kernel fails loudly instead of computing garbage.

- with ``OPD_SGLANG_SEEDED_SAMPLING=1`` (the launcher sets it on CPU): per-request seeded
  sampling, see ``_seeded_sampling.py``.

On GPU, install the real ``sglang-kernel`` wheel instead (stock SGLang needs none of this).
"""

from __future__ import annotations

import torch

from sgl_kernel._missing import MissingKernel, missing_module_getattr
from sgl_kernel._seeded_sampling import install as _install_seeded_sampling

_install_seeded_sampling()  # OPD_SGLANG_SEEDED_SAMPLING=1: per-request seeds on CPU

__version__ = "0.0.1+cpu-shim"
IS_OPD_CPU_SHIM = True
"""Marker so tools and tests can tell the stand-in from the real package."""


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write each request's new KV slots into its row of the request-to-token table.

    Request i owns row ``req_pool_indices[i]``; its new tokens occupy positions
    ``start_offset[i]:end_offset[i]`` and their KV-cache slots are the next
    ``end_offset[i] - start_offset[i]`` entries of ``out_cache_loc`` (requests concatenated in
    batch order). Same contract as SGLang's Triton ``assign_req_to_token_pool`` kernel.
    """
    del pool_len  # the row length is implicit in req_to_token's shape
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    cursor = 0
    for row, start, end in zip(rows, starts, ends):
        num_tokens = end - start
        if num_tokens <= 0:
            continue
        req_to_token[row, start:end] = out_cache_loc[cursor:cursor + num_tokens].to(
            req_to_token.dtype
        )
        cursor += num_tokens


__getattr__ = missing_module_getattr(__name__)
__all__ = ["assign_req_to_token_pool_cpu", "MissingKernel"]
