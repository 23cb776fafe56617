"""The one place where Megatron-Core 0.16.1 is made to run on a CPU-only machine.

Megatron-Core assumes CUDA throughout. Nothing here does anything when CUDA is available, so
GPU runs use Megatron untouched. On CPU, ``apply()`` (called by ``init_parallel`` and by
``cpu_mode``) patches exactly these things, each because Megatron would otherwise fail:

1. Device strings. RoPE moves ``inv_freq`` to ``torch.cuda.current_device()``, the DDP
   param/grad buffers, the pipeline p2p buffers, the schedules' token counters and grad-norm
   code create tensors with ``device="cuda"`` (50+ call sites). A ``TorchFunctionMode``
   (``_CudaToCpuMode``) rewrites any cuda device in a ``device=`` argument, in
   ``Tensor.to(...)`` and in ``Tensor.cuda()`` to cpu. It is active only inside learner
   calls (``cpu_mode`` / the ``scoped`` decorator on every public learner method), so other
   code in the process (tests, an in-process SGLang engine) never runs under it. Cost: one
   Python hook per torch call, ~8% of a tiny-model training step (an HF step measured with
   and without the mode), less for real model sizes.
2. ``torch.cuda.current_device`` returns 0 instead of initialising CUDA (the mode above then
   maps device 0 to cpu).
3. RNG. ``model_parallel_cuda_manual_seed`` and the RNG tracker call
   ``torch.cuda.get_rng_state/set_rng_state/manual_seed`` and Megatron's own
   ``_get_cuda_rng_state/_set_cuda_rng_state``. They are routed to the CPU default
   generator (``torch.default_generator.manual_seed``: ``torch.manual_seed`` would recurse
   into cuda seeding). Tracker forks then swap CPU generator states, which is harmless:
   dropout is 0 and weights come from HF checkpoints.
4. Grad clipping. ``clip_grad_by_total_norm_fp32`` asserts
   ``grad.type() == 'torch.cuda.FloatTensor'``; it is replaced by the same scaling without
   the assert (patching ``Tensor.type`` instead would lie to every caller).
5. Optimizer construction. ``DistributedOptimizer`` and ``Float16OptimizerWithFloat16Params``
   sort parameters by ``param.type() == 'torch.cuda.FloatTensor'`` (else TypeError). Inside
   ``cuda_tensor_types()`` only, which the learner wraps around ``get_megatron_optimizer``,
   a no-argument ``Tensor.type()`` answers with the cuda name ('torch.FloatTensor' ->
   'torch.cuda.FloatTensor'); everywhere else it tells the truth.
6. Streams/events/synchronize: ``torch.cuda.synchronize``, ``current_stream``,
   ``Event`` and ``nvtx`` ranges are called on paths we use (timers, DDP); on CPU there is
   nothing to wait for, so they become no-ops.

Items 2-6 replace functions process-wide, but only functions that raise or are meaningless
without CUDA, so no CPU code path changes behaviour. The causal attention mask is not patched: callers pass an explicit mask (Megatron's default
mask is built with ``device="cuda"`` inside a cached helper).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, List, TypeVar

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_MODE: "_CudaToCpuMode | None" = None
_DEPTH = 0
F = TypeVar("F", bound=Callable[..., Any])


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _to_cpu_device(device: Any) -> Any:
    """Map a cuda device spec (str, int, torch.device) to cpu; leave others alone."""
    if isinstance(device, torch.device):
        return torch.device("cpu") if device.type == "cuda" else device
    if isinstance(device, str):
        return "cpu" if device.startswith("cuda") else device
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"
    return device


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrite cuda devices to cpu in every torch call (see module docstring, items 1, 5)."""

    fake_cuda_type = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.type and self.fake_cuda_type and len(args) == 1 and not kwargs:
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _to_cpu_device(args[1])) + tuple(args[2:])
        return func(*args, **kwargs)


def _cpu_get_rng_state(*_args, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(state: torch.Tensor, *_args, **_kwargs) -> None:
    if isinstance(state, torch.Generator):  # graph-safe variant passes a generator
        state = state.get_state()
    torch.set_rng_state(state)


def _cpu_manual_seed(seed: int, *_args, **_kwargs) -> None:
    torch.default_generator.manual_seed(int(seed))


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Megatron's clip_grad_by_total_norm_fp32 without its cuda-type assert (item 4)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads: List[torch.Tensor] = [
        getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None
    ]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


class _NoOpEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        return None

    def wait(self, *args, **kwargs):
        return None

    def synchronize(self):
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


class _NoOpStream(_NoOpEvent):
    def wait_stream(self, *args, **kwargs):
        return None

    def wait_event(self, *args, **kwargs):
        return None


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.get_rng_state = _cpu_get_rng_state
    cuda.set_rng_state = _cpu_set_rng_state
    cuda.manual_seed = _cpu_manual_seed
    cuda.manual_seed_all = _cpu_manual_seed
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda *a, **k: None
    cuda.current_stream = lambda *a, **k: _NoOpStream()
    cuda.default_stream = lambda *a, **k: _NoOpStream()
    cuda.Stream = _NoOpStream
    cuda.Event = _NoOpEvent
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None


def _patch_megatron() -> None:
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state
    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu


@contextlib.contextmanager
def cuda_tensor_types():
    """Scope in which ``Tensor.type()`` reports cuda type names (item 5); no-op on GPU."""
    if _MODE is None:
        yield
        return
    _MODE.fake_cuda_type = True
    try:
        yield
    finally:
        _MODE.fake_cuda_type = False


def apply() -> bool:
    """Patch torch.cuda / Megatron functions for CPU if CUDA is absent (items 2-6).
    Idempotent. Returns True on CPU. The device mode (item 1) is entered by ``cpu_mode``."""
    global _APPLIED, _MODE
    if cuda_available():
        return False
    if not _APPLIED:
        _patch_torch_cuda()
        _patch_megatron()
        _MODE = _CudaToCpuMode()
        _APPLIED = True
    return True


@contextlib.contextmanager
def cpu_mode():
    """Run Megatron code on CPU: apply the patches and push the device mode (re-entrant)."""
    global _DEPTH
    if not apply() or _DEPTH > 0:
        yield
        return
    _DEPTH += 1
    try:
        with _MODE:
            yield
    finally:
        _DEPTH -= 1


def scoped(fn: F) -> F:
    """Decorator: the function runs inside ``cpu_mode()`` (no-op with CUDA)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with cpu_mode():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
