"""The prepared GPU check of the learner: training tokens/s and MFU, peak memory against the
plan on paper, the chunked logprobs against a naive log_softmax, and HF transformers training
the same shape, on random-weight Qwen3 models built by our learner code.

What it prints, for Qwen3-0.6B and Qwen3-1.7B shapes and a Qwen3-8B shape cut to the layers that
fit (said in its row), on one GPU in bf16 (one table each, the same in the JSON of ``--json``):

1. learner training (``opd_megatron.learner.Learner``, Megatron-Core, SFT loss, Adam, grad clip),
   with the local layer spec and, when Transformer Engine imports, the TE spec, at two microbatch
   budgets: tokens/s (all tokens of the batch, median step), MFU = tokens/s x the FLOPs account's
   training FLOPs per token (``plan.flops.FlopsCounter``: 6N + attention) / the GPU's dense BF16
   peak (989 TFLOP/s for H100/H200 SXM, from the device name; ``--peak-tflops`` otherwise);
   peak memory (``torch.cuda.max_memory_allocated`` over the timed steps, after
   ``reset_peak_memory_stats``, less what was allocated before the learner was built) against
   ``plan.budget.learner_memory`` for the same shape, dtype and microbatch, as a ratio. The local
   spec's attention keeps its [b, heads, S, S] scores (the plan assumes flash attention, which
   keeps none): ``+scores`` is that estimate (``unfused_scores_bytes``), printed beside the plan.
2. HF transformers (sdpa attention, bf16 weights and AdamW state, no fp32 master) training the
   same checkpoint on the same batch at the larger budget: tokens/s, and ours / HF. The first
   step's loss of both (same weights, same batch) is printed as a check of the GPU path.
3. ``sampled_token_logprobs`` (chunked; vocab-parallel with tp > 1, which one GPU cannot show)
   against ``log_softmax(logits.float()).gather`` at V=151,936, forward and forward + backward:
   peak extra memory, time (CUDA events, median) and the max abs difference of the results.

Timing: warm-up steps first, then each step between CUDA events (each step ends in a host sync
for its metrics anyway). Each model runs in a process of its own (its memory, CUDA context and
any crash its own; the learner first, then HF), the device facts and the logprobs in another;
this process only starts them and prints the tables. It checks up front what imports
(Megatron-Core, Transformer Engine, Apex, transformers) and prints one line for each part it
skips; a part that fails is reported, the rest still runs, and the exit status is 1.

Without CUDA (or with ``--cpu``) the same functions run a CPU form: tiny shapes (2 layers, and
8 layers cut to what fits a nominal 0.1 GiB, vocab 4,096, sequences of 64; the logprobs at the
full vocabulary over 128 positions), fp32 (the learner computes in fp32 on CPU), memory read as
the process's resident set (peak VmHWM over the timed steps less VmRSS before the build:
allocator and library overheads included, a smoke figure), MFU against a nominal 0.1 TFLOP/s,
which is not meaningful. tests/test_bench_gpu_check.py runs that form, so the script keeps
running while no GPU is lent.

Run here (CPU form, ~30 s on 2 cores):
    .venv/bin/python bench/gpu_check.py [--json out.json]
    make gpu-check

On a lent H100/H200 (no registry there; its python3 3.12 has torch, transformers, safetensors
and triton, not Megatron-Core, TE or omegaconf), fetch the two wheels here once (2.9 MB; the
megatron-core one is cp312 only for its dataset helper, the learner path is pure Python) into
the ignored folder .whl:
    mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 -d .whl \\
        megatron-core==0.16.1 omegaconf==2.4.0
and run there, carrying [".whl"], with timeout_s 600 (parts still running at --time-limit-s,
450 s by default, are stopped, so the check ends in under 8 minutes; ~3-4 expected):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 \\
        python3 bench/gpu_check.py --json $OUT/gpu_check.json
Sized for an H200 (kind nvidia-h200, ~140 GiB): on an 80 GiB H100 the 8B is cut to that GPU,
but the 1.7B's 8192-token rows may not fit (an OOM is reported and the rest runs). Random
checkpoints are written to /dev/shm when it has room (the 8B cut is ~7 GB in bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

if __name__ == "__main__" and "--cpu" in sys.argv:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: CPU form on a GPU machine

import torch  # noqa: E402

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # the repo (opd_megatron) and the sibling benches

GIB = 1024**3
PEAK_BF16_TFLOPS: Tuple[Tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
    ("H200", 989.0), ("A100", 312.0))
"""Dense (no sparsity) BF16 tensor-core peak by device-name substring, NVIDIA datasheets (SXM
unless named); the first match wins."""
CPU_NOMINAL_TFLOPS = 0.1
"""A round figure for 2 CPU cores, so the CPU form prints an MFU column; not meaningful."""
SCORE_BYTES_KEPT_FP32 = 4
"""Bytes per attention score the local spec keeps for the backward: the fp32 softmax output..."""
SCORE_BYTES_TRANSIENT = 16
"""...and, for the one layer being computed, its fp32 upcast, masked copy and gradients."""
MIN_PART_S = 20.0
"""A model is not started with less than this left of --time-limit-s."""


@dataclass(frozen=True)
class Form:
    """Sizes of one form of the check (GPU or CPU): the same functions at different shapes."""

    models: Tuple[str, ...]
    """Named Qwen3 shapes (opd_megatron/models/qwen3_shapes.py) or this file's CPU_SHAPES."""
    seq_len: int
    rows: int
    """Rows of the training batch (rows x seq_len tokens per optimizer step)."""
    budgets: Tuple[int, ...]
    """Microbatch token budgets (``parallel.microbatch_tokens``), multiples of seq_len."""
    warmup_steps: int
    timed_steps: int
    logprob_positions: int
    logprob_chunks: Tuple[Optional[int], ...]
    """Chunk sizes (positions) of the chunked logprobs; None: its default (CHUNK_ELEMENTS)."""
    logprob_repeats: int
    fit_layers: Tuple[str, ...] = ()
    """Models cut to the layers that fit ``memory_gib`` (the 8B on one GPU)."""
    memory_gib: Optional[float] = None
    """Memory the cut layers must fit in; None: the GPU's."""


FORMS = {
    "gpu": Form(models=("qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"), seq_len=2048, rows=8,
                budgets=(2048, 8192), warmup_steps=2, timed_steps=3, logprob_positions=4096,
                logprob_chunks=(None, 256), logprob_repeats=5, fit_layers=("qwen3-8b",)),
    "cpu": Form(models=("tiny-tied", "tiny-untied"), seq_len=64, rows=8, budgets=(128, 512),
                warmup_steps=1, timed_steps=2, logprob_positions=128, logprob_chunks=(None, 64),
                logprob_repeats=3, fit_layers=("tiny-untied",), memory_gib=0.1),
}
CPU_SHAPES = {
    "tiny-tied": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      vocab_size=4096, tie_word_embeddings=True),
    "tiny-untied": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=8,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        vocab_size=4096, tie_word_embeddings=False),
}


# ----- the device: clock and memory ----------------------------------------------------------

def _status_bytes(field_name: str) -> int:
    from logprob_memory import _status_kib

    return _status_kib(field_name) * 1024


class Meter:
    """Clock and memory of the device: CUDA events and the caching allocator's counters on a
    GPU; perf_counter and the process's resident set (VmRSS, peak VmHWM) on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.memory_kind = ("torch.cuda.max_memory_allocated" if self.cuda else
                            "process RSS (VmHWM - VmRSS before; CPU smoke figure)")

    def settle(self) -> None:
        """Free what is garbage, so the next baseline is what is really held."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _status_bytes("VmRSS")

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # peak RSS := current RSS

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _status_bytes("VmHWM")

    def timed(self, fn: Callable[[], object]) -> float:
        """Seconds of one call of ``fn`` on the device (CUDA events on a GPU)."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def peak_extra(self, fn: Callable[[], object]) -> Tuple[object, int]:
        """(result of ``fn``, bytes its high-water mark rose above what was held before)."""
        self.settle()
        before = self.allocated()
        self.reset_peak()
        out = fn()
        return out, self.peak() - before


def peak_tflops(device_name: str, override: Optional[float],
                cuda: bool) -> Tuple[Optional[float], str]:
    """(peak TFLOP/s the MFU is against, where it comes from)."""
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    if not cuda:
        return CPU_NOMINAL_TFLOPS, (f"{CPU_NOMINAL_TFLOPS:g} TFLOP/s, a nominal CPU figure: "
                                    "MFU on CPU is not meaningful")
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops, f"{tflops:g} TFLOP/s dense BF16 ({key} datasheet)"
    return None, f"unknown for {device_name!r}: MFU not printed (pass --peak-tflops)"


def matmul_tflops(meter: Meter) -> float:
    """Achieved rate of one large square matmul in the check's dtype (the practical ceiling)."""
    n, dtype = (8192, torch.bfloat16) if meter.cuda else (512, torch.float32)
    a = torch.randn(n, n, device=meter.device, dtype=dtype)
    b = torch.randn(n, n, device=meter.device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = min(meter.timed(lambda: a @ b) for _ in range(10))
    return 2 * n**3 / best / 1e12


# ----- what runs here: imports ---------------------------------------------------------------

def _import_version(module: str, dist: str) -> str:
    """Import ``module`` (raises what the import raises) and return its version."""
    import importlib
    import importlib.metadata as md

    mod = importlib.import_module(module)
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return str(getattr(mod, "__version__", "unknown version"))


def probe(cuda: bool) -> Tuple[Dict[str, str], List[str]]:
    """(versions of the packages that import, one line per part skipped and why)."""
    versions = {"torch": torch.__version__}
    skipped: List[str] = []
    needs = [("megatron.core", "megatron-core", "learner rows", "put the carried megatron-core "
              "wheel on PYTHONPATH"),
             ("transformers", "transformers", "learner and HF rows", "the random checkpoints "
              "are built with it")]
    if cuda:
        needs.append(("transformer_engine", "transformer-engine", "TE spec rows", "the local "
                      "spec still runs"))
    else:
        skipped.append("TE spec rows: no CUDA (Transformer Engine runs on GPUs only)")
    for module, dist, part, consequence in needs:
        try:
            versions[dist] = _import_version(module, dist)
        except Exception as exc:  # missing, or a broken build: say which
            skipped.append(f"{part}: {module} does not import ({type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0][:200]}); {consequence}")
    try:
        versions["apex"] = _import_version("apex", "apex")
    except Exception:
        if "transformer-engine" not in versions:
            skipped.append("fused kernels: neither TE nor Apex imports, so Megatron runs torch "
                           "AdamW, torch RMSNorm and its local multi-tensor fallbacks")
    return versions, skipped


# ----- shapes, the plan on paper, the layers that fit ----------------------------------------

def hf_fields(name: str) -> Dict:
    """HF config fields of a named Qwen3 shape or a CPU shape."""
    from opd_megatron.models.qwen3_shapes import QWEN3_COMMON, QWEN3_SHAPES

    if name in QWEN3_SHAPES:
        return dict(QWEN3_SHAPES[name])
    return dict(QWEN3_COMMON, **CPU_SHAPES[name])


def unfused_scores_bytes(shape, *, rows: int, seq_len: int, dtype_bytes: int) -> float:
    """What the local spec's DotProductAttention holds beyond the plan (which assumes flash
    attention): per layer the [rows, heads, S, S] fp32 softmax output and, in bf16, its cast
    (kept for the backward), plus for the layer at work its transients and Megatron's score
    buffer. An estimate from the code, not a measurement."""
    scores = rows * shape.num_heads * seq_len * seq_len
    kept = SCORE_BYTES_KEPT_FP32 + (dtype_bytes if dtype_bytes < 4 else 0)
    return scores * (shape.num_layers * kept + SCORE_BYTES_TRANSIENT + dtype_bytes)


def plan_gib(shape, *, microbatch_tokens: int, seq_len: int, dtype: str, spec: str):
    """(the plan's LearnerMemory on one GPU, the local spec's score estimate in GiB)."""
    from opd_megatron.plan.budget import BYTES_PER_DTYPE, learner_memory

    plan = learner_memory(shape, tp=1, pp=1, dp=1, microbatch_tokens=microbatch_tokens,
                          dtype=dtype, distributed_optimizer=True)
    scores = 0.0
    if spec == "local":
        scores = unfused_scores_bytes(shape, rows=microbatch_tokens // seq_len, seq_len=seq_len,
                                      dtype_bytes=BYTES_PER_DTYPE[dtype]) / GIB
    return plan, scores


def layers_that_fit(shape, *, memory_gib: float, microbatch_tokens: int, seq_len: int,
                    dtype: str, spec: str = "local") -> int:
    """Most layers of ``shape`` whose plan (+ the local spec's scores) fits the learner's share
    (plan.budget.LEARNER_MEMORY_FRACTION) of ``memory_gib``; 0 if not even one does."""
    from opd_megatron.plan.budget import LEARNER_MEMORY_FRACTION

    for num_layers in range(shape.num_layers, 0, -1):
        cut = dataclasses.replace(shape, num_layers=num_layers)
        plan, scores = plan_gib(cut, microbatch_tokens=microbatch_tokens, seq_len=seq_len,
                                dtype=dtype, spec=spec)
        if plan.total + scores <= LEARNER_MEMORY_FRACTION * memory_gib:
            return num_layers
    return 0


@dataclass
class Case:
    """One model of the check: its HF fields as built (layers cut to fit, if so)."""

    name: str
    fields: Dict
    full_layers: int
    note: str = ""

    @property
    def shape(self):
        from opd_megatron.plan.flops import shape_from_hf_config

        return shape_from_hf_config(self.fields, self.name)

    @property
    def layers_line(self) -> str:
        return self.note or f"{self.full_layers} layers"


def make_cases(form: Form, *, memory_gib: float, dtype: str) -> List[Case]:
    from opd_megatron.plan.flops import shape_from_hf_config

    cases = []
    for name in form.models:
        fields = hf_fields(name)
        full = fields["num_hidden_layers"]
        case = Case(name, fields, full)
        if name in form.fit_layers:
            fit = layers_that_fit(shape_from_hf_config(fields, name), memory_gib=memory_gib,
                                  microbatch_tokens=max(form.budgets), seq_len=form.seq_len,
                                  dtype=dtype)
            case.fields = dict(fields, num_hidden_layers=max(fit, 1))
            case.note = (f"{max(fit, 1)} of {full} layers: what fits {memory_gib:.1f} GiB by the "
                         f"plan + the local spec's scores at {max(form.budgets)} tokens")
        cases.append(case)
    return cases


# ----- the parts -----------------------------------------------------------------------------

@contextlib.contextmanager
def random_checkpoint(case: Case, *, dtype: torch.dtype, device: torch.device):
    """An HF directory (config.json + model.safetensors) of ``case`` with random weights, built
    on ``device``; in /dev/shm when it has room for twice the weights."""
    from transformers import AutoModelForCausalLM

    from opd_megatron.models.tiny import TinyShape, qwen3_config

    f = case.fields
    cfg = qwen3_config(TinyShape(
        hidden_size=f["hidden_size"], num_layers=f["num_hidden_layers"],
        intermediate_size=f["intermediate_size"], num_heads=f["num_attention_heads"],
        num_kv_heads=f["num_key_value_heads"], head_dim=f["head_dim"],
        tie_word_embeddings=f["tie_word_embeddings"],
        max_position_embeddings=f["max_position_embeddings"]), vocab_size=f["vocab_size"])
    need = 2 * case.shape.total_params * torch.finfo(dtype).bits // 8
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and shutil.disk_usage(shm).free > need else None
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=root) as tmp:
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        model.save_pretrained(tmp)
        del model
        yield tmp


def learner_rows(case: Case, model_dir: str, spec: str, form: Form, meter: Meter,
                 peak: Optional[float]) -> Iterator[Dict]:
    """Train the learner (``spec`` layers) at each budget, yielding one row per budget as it is
    measured (an OOM at the larger budget keeps the smaller's); once the learner is deleted,
    every row it yielded gets ``leftover_gib``, what is still held then."""
    from learner_throughput import LR, make_batch

    from opd_megatron.config.schema import ModelConfig, ObjectiveConfig, OptimConfig, ParallelConfig
    from opd_megatron.learner import Learner
    from opd_megatron.plan.flops import FlopsCounter

    meter.settle()
    base = meter.allocated()
    learner = Learner(ModelConfig(path=model_dir, dtype="bfloat16"), ObjectiveConfig(method="sft"),
                      OptimConfig(lr=LR, warmup_steps=0, grad_clip=1.0),
                      ParallelConfig(microbatch_tokens=form.budgets[0]), num_steps=10_000,
                      seed=0, use_te=spec == "te")
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[learner.dtype]
    batch = make_batch(form.rows, form.seq_len, vocab=case.fields["vocab_size"])
    step_flops = FlopsCounter(case.shape).add_sequences("learner_train",
                                                        [(0, form.seq_len)] * form.rows)
    rows = []
    for budget in form.budgets:
        learner.microbatch_tokens = budget
        losses = [learner.train_step(batch)["loss"] for _ in range(form.warmup_steps)]
        static = meter.allocated() - base
        meter.reset_peak()
        metrics: List[Dict] = []
        times = [meter.timed(lambda: metrics.append(learner.train_step(batch)))
                 for _ in range(form.timed_steps)]
        measured = meter.peak() - base
        plan, scores = plan_gib(case.shape, microbatch_tokens=budget, seq_len=form.seq_len,
                                dtype=dtype, spec=spec)
        step_s = statistics.median(times)
        rows.append(dict(
            model=case.name, layers=case.fields["num_hidden_layers"], full_layers=case.full_layers,
            note=case.note, spec=spec, dtype=dtype, microbatch_tokens=budget,
            tokens_per_step=batch.token_ids.numel(), step_times_s=times,
            tokens_per_s=batch.token_ids.numel() / step_s, step_flops=step_flops,
            mfu=step_flops / step_s / (peak * 1e12) if peak else None,
            plan=dict(dataclasses.asdict(plan), total=plan.total,
                      static=plan.weights + plan.gradients + plan.optimizer),
            plan_gib=plan.total, scores_gib=scores, measured_gib=measured / GIB,
            measured_static_gib=static / GIB, memory_ratio=measured / GIB / plan.total,
            memory_ratio_with_scores=measured / GIB / (plan.total + scores),
            loss_step0=losses[0] if budget == form.budgets[0] else None,
            skipped_steps=sum(m["skipped"] for m in metrics)))  # no optimizer step: faster
        yield rows[-1]
    del learner
    _drop_megatron_buffers()
    meter.settle()
    leftover = (meter.allocated() - base) / GIB  # a learner that leaks shows here
    for row in rows:
        row["leftover_gib"] = leftover


def _drop_megatron_buffers() -> None:
    """Megatron keeps one attention-score buffer per process (GlobalMemoryBuffer); a fresh one
    per learner, so each row's memory counts its own."""
    from megatron.core import parallel_state as ps

    if getattr(ps, "_GLOBAL_MEMORY_BUFFER", None) is not None:
        ps.destroy_global_memory_buffer()
        ps._set_global_memory_buffer()


def hf_row(case: Case, model_dir: str, form: Form, meter: Meter, peak: Optional[float],
           dtype: torch.dtype) -> Dict:
    """Train the same checkpoint with HF transformers at the largest budget."""
    from learner_throughput import hf_trainer, make_batch

    from opd_megatron.plan.flops import FlopsCounter

    budget = max(form.budgets)
    meter.settle()
    base = meter.allocated()
    step = hf_trainer(model_dir, dtype=dtype, device=str(meter.device),
                      microbatch_rows=budget // form.seq_len)
    batch = make_batch(form.rows, form.seq_len, vocab=case.fields["vocab_size"])
    losses = [step(batch) for _ in range(form.warmup_steps)]
    meter.reset_peak()
    times = [meter.timed(lambda: step(batch)) for _ in range(form.timed_steps)]
    measured = meter.peak() - base
    del step
    meter.settle()
    step_s = statistics.median(times)
    step_flops = FlopsCounter(case.shape).add_sequences("learner_train",
                                                        [(0, form.seq_len)] * form.rows)
    return dict(model=case.name, layers=case.fields["num_hidden_layers"], microbatch_tokens=budget,
                step_times_s=times, tokens_per_s=batch.token_ids.numel() / step_s,
                mfu=step_flops / step_s / (peak * 1e12) if peak else None,
                measured_gib=measured / GIB, loss_step0=losses[0])


def logprob_rows(form: Form, meter: Meter) -> List[Dict]:
    """Chunked logprobs vs naive log_softmax at V=151,936 (bf16 logits), forward and
    forward + backward: peak extra memory, median time, max abs difference to naive and to a
    float64 log_softmax of the same logits."""
    from logprob_memory import VOCAB, _make_inputs, run_variant

    from opd_megatron.objective.logprobs import CHUNK_ELEMENTS

    logits, ids = _make_inputs(torch, 1, form.logprob_positions, torch.bfloat16, seed=0,
                               device=str(meter.device))
    variants = [("naive", None)] + [("chunked", c) for c in form.logprob_chunks]
    with torch.no_grad():  # float64 reference, 64 positions at a time
        ref = torch.cat([torch.log_softmax(logits[:, t0:t0 + 64].double(), -1).gather(
            -1, ids[:, t0:t0 + 64, None])[..., 0] for t0 in range(0, ids.shape[1], 64)], dim=1)
    rows = []
    for backward in (False, True):
        logits.requires_grad_(backward)
        naive = None
        for variant, chunk in variants:
            def call():
                return run_variant(logits, ids, variant, backward=backward, chunk_size=chunk)

            out, extra = meter.peak_extra(call)
            times = [meter.timed(call) for _ in range(form.logprob_repeats)]
            naive = out if naive is None else naive
            positions = chunk or max(1, CHUNK_ELEMENTS // VOCAB)
            rows.append(dict(
                pass_="forward + backward" if backward else "forward", variant=variant,
                chunk_positions=None if variant == "naive" else positions,
                chunk_default=variant != "naive" and chunk is None,
                positions=form.logprob_positions, vocab=VOCAB, peak_extra_gib=extra / GIB,
                time_s=statistics.median(times), max_abs_diff=float((out - naive).abs().max()),
                fp64_error=float((out.double() - ref).abs().max())))
    del logits, ids, ref
    meter.settle()
    for row in rows:
        ref = next(r for r in rows if r["pass_"] == row["pass_"] and r["variant"] == "naive")
        row["memory_naive_over_this"] = ref["peak_extra_gib"] / max(row["peak_extra_gib"], 1e-9)
        row["time_this_over_naive"] = row["time_s"] / ref["time_s"]
    return rows


# ----- the parts as processes ----------------------------------------------------------------

@dataclass
class Report:
    """What a part found, written to ``path`` after each step (a part cut short keeps what it
    did); the parent merges the parts' reports into one."""

    path: Optional[str]
    data: Dict = field(default_factory=lambda: {"environment": {}, "skipped": [], "train": [],
                                                "hf": [], "logprobs": [], "failures": []})

    def save(self) -> None:
        if self.path:  # whole or not at all: a part may be killed at any moment
            tmp = f"{self.path}.tmp"
            Path(tmp).write_text(json.dumps(self.data, indent=1, default=str))
            os.replace(tmp, self.path)

    def attempt(self, what: str, fn: Callable[[], object], meter: Optional[Meter] = None):
        """``fn()``, or None with the failure recorded (an OOM must not end the whole check)."""
        try:
            return fn()
        except Exception as exc:  # report and go on with the next part
            line = f"{what}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            print(f"FAILED: {line}", flush=True)
            self.data["failures"].append(line)
        finally:
            self.save()
        if meter is not None:
            meter.settle()  # here, not in the except block: the traceback's frames are gone now
        return None

    def merge(self, other: Dict) -> None:
        for key in ("train", "hf", "logprobs", "failures"):
            self.data[key] += other.get(key, [])
        seen = self.data["skipped"]
        seen += [line for line in other.get("skipped", []) if line not in seen]
        env = other.get("environment", {})
        versions = dict(self.data["environment"].get("versions", {}), **env.get("versions", {}))
        self.data["environment"].update(env, versions=versions)


def environment_part(spec: Dict, report: Report, meter: Meter) -> None:
    """The device, its peak and matmul rate, and the logprobs (no Megatron needed)."""
    cuda = meter.cuda
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    peak, source = peak_tflops(name, spec["peak_tflops"], cuda)
    form = FORMS[spec["form"]]
    report.data["environment"] = dict(
        device_name=name, versions={"torch": torch.__version__}, peak_tflops=peak,
        peak_source=source, matmul="8192^3 bf16" if cuda else "512^3 fp32",
        matmul_tflops=matmul_tflops(meter), memory_kind=meter.memory_kind,
        memory_gib=torch.cuda.mem_get_info()[1] / GIB if cuda else form.memory_gib,
        seq_len=form.seq_len, rows=form.rows, budgets=form.budgets)
    report.save()
    report.data["logprobs"] = report.attempt("logprobs", lambda: logprob_rows(form, meter),
                                             meter) or []


def case_part(spec: Dict, report: Report, meter: Meter) -> None:
    """One model: its random checkpoint, the learner with each spec that imports, then HF."""
    form, case = FORMS[spec["form"]], Case(**spec["case"])
    versions, skipped = probe(meter.cuda)
    report.data.update(environment={"versions": versions}, skipped=skipped)
    if "transformers" not in versions:
        return
    specs = ["local"] + (["te"] if "transformer-engine" in versions else [])
    if "megatron-core" not in versions:
        specs = []
    dtype = torch.bfloat16 if meter.cuda else torch.float32
    start = time.perf_counter()

    def run(model_dir: str) -> None:
        for layer_spec in specs:
            def train() -> None:
                for row in learner_rows(case, model_dir, layer_spec, form, meter,
                                        spec["peak_tflops"]):
                    report.data["train"].append(row)
                    report.save()

            report.attempt(f"{case.name} learner ({layer_spec} spec)", train, meter)
            print(f"  {case.name}: learner ({layer_spec} spec) done, "
                  f"{time.perf_counter() - start:.0f} s into this model", flush=True)
        row = report.attempt(f"{case.name} hf", lambda: hf_row(
            case, model_dir, form, meter, spec["peak_tflops"], dtype), meter)
        report.data["hf"] += [row] if row else []

    def with_checkpoint() -> None:
        with random_checkpoint(case, dtype=dtype, device=meter.device) as model_dir:
            run(model_dir)

    report.attempt(f"{case.name} checkpoint", with_checkpoint, meter)


def child_main(spec: Dict, out_path: str) -> int:
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine and Apex) .*installed")
    warnings.filterwarnings("ignore", message=".*(deprecated|is not a leaf Tensor)")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    meter = Meter(torch.device("cuda", torch.cuda.current_device()) if cuda
                  else torch.device("cpu"))
    report = Report(out_path)
    (environment_part if spec["part"] == "environment" else case_part)(spec, report, meter)
    report.save()
    return 1 if report.data["failures"] else 0


def run_part(spec: Dict, tmp: str, timeout_s: float) -> Dict:
    """Run one part in a fresh process (its memory and CUDA context its own, a crash or hang
    its own) and return its report; its progress lines go to our stdout."""
    out = Path(tmp) / f"part-{len(os.listdir(tmp))}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec),
           "--child-out", str(out)]
    try:
        status = subprocess.run(cmd, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        status = f"killed after {timeout_s:.0f} s (--time-limit-s)"
    data = json.loads(out.read_text()) if out.is_file() else {}  # written whole (Report.save)
    if status not in (0, 1):  # 1: failures the part reported itself
        what = spec.get("case", {}).get("name", spec["part"])
        data.setdefault("failures", []).append(f"{what}: process exited {status}")
    return data


# ----- the tables ----------------------------------------------------------------------------

def compare_with_hf(data: Dict) -> None:
    """Each HF row gets ours / HF tokens/s (local spec, same budget) and the difference of the
    first step's losses (same weights, same batch)."""
    for h in data["hf"]:
        ours = [r for r in data["train"] if r["model"] == h["model"] and r["spec"] == "local"]
        same = [r for r in ours if r["microbatch_tokens"] == h["microbatch_tokens"]]
        h["ours_over_hf"] = same[0]["tokens_per_s"] / h["tokens_per_s"] if same else None
        h["loss_step0_diff"] = ours[0]["loss_step0"] - h["loss_step0"] if ours else None


def _f(value, spec: str, none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else format(value, spec)


def print_tables(data: Dict) -> None:
    env = data["environment"]
    print(f"\n== gpu_check ({data['form']} form): {env.get('device_name', '?')}, "
          + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()) + " ==")
    if "peak_source" in env:
        print(f"MFU against: {env['peak_source']}; one {env['matmul']} matmul ran at "
              f"{env['matmul_tflops']:.3g} TFLOP/s")
        print(f"memory: {env['memory_kind']}; plan: opd_megatron.plan.budget.learner_memory")
    for line in data["skipped"]:
        print(f"skipped: {line}")
    _print_train(data["train"], env)
    _print_hf(data["hf"], data["train"])
    _print_logprobs(data["logprobs"])
    for line in data["failures"]:
        print(f"FAILED: {line}")
    print(f"\n{data['elapsed_s']:.0f} s wall")


def _print_train(train: List[Dict], env: Dict) -> None:
    dtype = train[0]["dtype"] if train else "-"
    print(f"\n-- learner training ({dtype}, batch {env.get('rows')} x {env.get('seq_len')} "
          "tokens, SFT loss, Adam; meas = peak less what was held before the build) --")
    print(f"{'model':12} {'layers':>6} {'spec':5} {'mb tok':>6} {'tokens/s':>10} {'MFU':>6} "
          f"{'plan GiB':>8} {'+scores':>7} {'meas GiB':>8} {'meas/plan':>9} {'/(p+s)':>6} "
          f"{'static m/p':>10} {'loss@0':>7}")
    for r in train:
        print(f"{r['model']:12} {r['layers']:>3}/{r['full_layers']:<2} {r['spec']:5} "
              f"{r['microbatch_tokens']:>6} {r['tokens_per_s']:>10.0f} {_f(r['mfu'], '.1%'):>6} "
              f"{r['plan_gib']:>8.3g} {r['scores_gib']:>7.3g} {r['measured_gib']:>8.3g} "
              f"{r['memory_ratio']:>9.2f} {r['memory_ratio_with_scores']:>6.2f} "
              f"{r['measured_static_gib'] / r['plan']['static']:>10.2f} "
              f"{_f(r['loss_step0'], '.4f'):>7}")
    for note in sorted({r["note"] for r in train if r["note"]}):
        print(f"  note: {note}")
    for r in train:
        if r["skipped_steps"]:
            print(f"  {r['model']} {r['spec']} {r['microbatch_tokens']}: {r['skipped_steps']:.0f} "
                  "timed steps skipped (non-finite loss or gradient): their time is too short")
    leftovers = [f"{r['model']} {r['spec']} {r['leftover_gib']:.3g}" for r in train
                 if "leftover_gib" in r and r["microbatch_tokens"] == train[0]["microbatch_tokens"]]
    if leftovers:
        print("  GiB still held after the learner was deleted (memory as above): "
              + ", ".join(leftovers))


def _print_hf(hf: List[Dict], train: List[Dict]) -> None:
    print("\n-- HF transformers, same checkpoint and batch (sdpa attention; on GPU bf16 "
          "weights and AdamW state) --")
    print(f"{'model':12} {'mb tok':>6} {'tokens/s':>10} {'MFU':>6} {'meas GiB':>8} "
          f"{'ours/hf':>7} {'loss@0':>7} {'ours-hf loss@0':>14}")
    for h in hf:
        print(f"{h['model']:12} {h['microbatch_tokens']:>6} {h['tokens_per_s']:>10.0f} "
              f"{_f(h['mfu'], '.1%'):>6} {h['measured_gib']:>8.3g} "
              f"{_f(h['ours_over_hf'], '.2f'):>7} {h['loss_step0']:>7.4f} "
              f"{_f(h['loss_step0_diff'], '+.2e'):>14}")


def _print_logprobs(rows: List[Dict]) -> None:
    if not rows:
        return
    print(f"\n-- logprobs of [1, {rows[0]['positions']}, {rows[0]['vocab']}] bf16 logits: chunked "
          "= objective.sampled_token_logprobs, naive = log_softmax(float).gather --")
    print(f"{'pass':18} {'variant':22} {'peak extra GiB':>14} {'ms':>9} "
          f"{'mem naive/this':>14} {'time this/naive':>15} {'max|diff|':>9} {'fp64 err':>8}")
    for r in rows:
        name = r["variant"] if r["variant"] == "naive" else (
            f"chunked {r['chunk_positions']} pos" + (" (auto)" if r["chunk_default"] else ""))
        print(f"{r['pass_']:18} {name:22} {r['peak_extra_gib']:>14.4f} {r['time_s'] * 1e3:>9.2f} "
              f"{r['memory_naive_over_this']:>14.1f} {r['time_this_over_naive']:>15.2f} "
              f"{r['max_abs_diff']:>9.1e} {r['fp64_error']:>8.1e}")
    print("max|diff|: against naive; fp64 err: against a float64 log_softmax of the same logits")


# ----- main ----------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU form even where CUDA is")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--models", help="comma list overriding the form's models")
    parser.add_argument("--peak-tflops", type=float, help="peak the MFU is against")
    parser.add_argument("--time-limit-s", type=float, default=450.0,
                        help="parts still running then are stopped, later ones not started")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child), args.child_out)
    start = time.perf_counter()
    form_name = "gpu" if torch.cuda.is_available() else "cpu"  # no CUDA context in this process
    form = FORMS[form_name]
    if args.models:
        form = dataclasses.replace(form, models=tuple(args.models.split(",")))
    from opd_megatron.models.qwen3_shapes import QWEN3_SHAPES

    unknown = [m for m in form.models if m not in QWEN3_SHAPES and m not in CPU_SHAPES]
    if unknown:
        print(f"gpu_check: unknown --models {unknown}; known: "
              f"{', '.join(sorted(QWEN3_SHAPES) + sorted(CPU_SHAPES))}", file=sys.stderr)
        return 2
    report = Report(args.json)
    report.data["form"] = form_name

    def left_s() -> float:
        return args.time_limit_s - (time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="gpu-check-parts-") as tmp:
        print(f"gpu_check ({form_name} form): environment and logprobs", flush=True)
        report.merge(run_part({"part": "environment", "form": form_name,
                               "peak_tflops": args.peak_tflops}, tmp, left_s()))
        env = report.data["environment"]
        dtype = "bfloat16" if form_name == "gpu" else "float32"
        cases = make_cases(form, memory_gib=env["memory_gib"], dtype=dtype) \
            if env.get("memory_gib") else []
        for case in cases:
            if left_s() < MIN_PART_S:
                report.data["skipped"].append(f"{case.name}: not started, under {MIN_PART_S} s "
                                              f"left of --time-limit-s {args.time_limit_s:g}")
                continue
            print(f"[{time.perf_counter() - start:4.0f} s] {case.name} ({case.layers_line})",
                  flush=True)
            report.merge(run_part({"part": "case", "form": form_name,
                                   "case": dataclasses.asdict(case),
                                   "peak_tflops": env.get("peak_tflops")}, tmp, left_s()))
    report.data["elapsed_s"] = time.perf_counter() - start
    compare_with_hf(report.data)
    report.save()
    print_tables(report.data)
    return 1 if report.data["failures"] or not cases else 0


if __name__ == "__main__":
    sys.exit(main())
