"""Per-request seeded sampling for SGLang on CPU (enabled by OPD_SGLANG_SEEDED_SAMPLING=1).

Why: on GPU, SGLang's deterministic inference samples every token with a Gumbel-max draw keyed
on (request ``sampling_seed``, position, token id), so a seed fixes the sample whatever the
batch composition or the server's history. On CPU, ``--enable-deterministic-inference`` is
refused (it needs a GPU attention backend), so ``sampling_seed`` is ignored and samples depend
on the order requests reach the scheduler: two runs with the same seed differ, and a resumed
run cannot reproduce an uninterrupted one.

What: after ``sglang.srt.sampling.sampling_batch_info`` is imported, wrap
``SamplingBatchInfo.from_schedule_batch`` so the batch carries the requests' seeds, which
routes SGLang's own sampler through its seeded ``multinomial_with_seed`` path (the same code
the GPU deterministic mode runs). Attention and matmuls are untouched. Requests without a seed
keep SGLang's default seed (42), exactly as its deterministic mode does.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

TARGET = "sglang.srt.sampling.sampling_batch_info"
ENV = "OPD_SGLANG_SEEDED_SAMPLING"


def _patch(module) -> None:
    import torch

    cls = module.SamplingBatchInfo
    if getattr(cls, "_opd_seeded", False):
        return
    original = cls.from_schedule_batch.__func__

    def from_schedule_batch(klass, batch, vocab_size):
        info = original(klass, batch, vocab_size)
        if info.sampling_seed is None:
            seeds = [r.sampling_params.sampling_seed if r.sampling_params.sampling_seed is not None
                     else 42 for r in batch.reqs]
            info.sampling_seed = torch.tensor(seeds, dtype=torch.int64, device=info.device)
        return info

    cls.from_schedule_batch = classmethod(from_schedule_batch)
    cls._opd_seeded = True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def install() -> None:
    if os.environ.get(ENV) != "1":
        return
    from sgl_kernel._murmur import register

    register()
    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
