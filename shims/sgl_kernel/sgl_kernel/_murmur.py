"""``sgl_kernel::murmur_hash32_cpu`` in plain torch: the hash behind SGLang's seeded sampling.

SGLang's ``multinomial_with_seed`` draws Gumbel noise from MurmurHash3 of (seed low 32 bits,
seed high 32 bits, position, token id); on CPU it calls this op from the (unpublished) CPU
kernel package. Same blocks, constants and finaliser as SGLang's Triton kernel
(sglang/kernels/ops/sampling/murmur_hash.py), computed in int64 with 32-bit masks.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = (k * 0xCC9E2D51) & _M32
    k = _rotl(k, 15)
    k = (k * 0x1B873593) & _M32
    h = h ^ k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _fmix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def murmur_hash32(seed: torch.Tensor, positions: torch.Tensor, col_indices: torch.Tensor) -> torch.Tensor:
    """[n] seeds, [n] positions, [m] columns -> [n, m] uint32 hashes."""
    s = seed.to(torch.int64)
    lo, hi = (s & _M32).unsqueeze(1), ((s >> 32) & _M32).unsqueeze(1)
    pos = (positions.to(torch.int64) & _M32).unsqueeze(1)
    col = (col_indices.to(torch.int64) & _M32).unsqueeze(0)
    h = torch.zeros((s.shape[0], 1), dtype=torch.int64, device=seed.device)
    h = _mix(_mix(_mix(h, lo), hi), pos)
    h = _mix(h.expand(-1, col.shape[1]), col.expand(h.shape[0], -1))
    return _fmix(h ^ 16).to(torch.uint32)


def register() -> None:
    """Define the op in the ``sgl_kernel`` torch namespace (once per process)."""
    if hasattr(torch.ops.sgl_kernel, "murmur_hash32_cpu"):
        return
    lib = torch.library.Library("sgl_kernel", "FRAGMENT")
    lib.define("murmur_hash32_cpu(Tensor seed, Tensor positions, Tensor col_indices) -> Tensor")
    lib.impl("murmur_hash32_cpu", murmur_hash32, "CPU")

    @torch.library.register_fake("sgl_kernel::murmur_hash32_cpu", lib=lib)
    def _fake(seed, positions, col_indices):
        return seed.new_empty((seed.shape[0], col_indices.shape[0]), dtype=torch.uint32)

    register._lib = lib  # keep the library alive
