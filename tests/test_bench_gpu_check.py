"""bench/gpu_check.py, the prepared GPU check, in its CPU form: the real script in a subprocess
(the same functions as on a GPU, at tiny shapes), so it cannot rot while no GPU is lent; and the
pieces that size the GPU run (layers that fit, the peak the MFU is against) in process.

Run: .venv/bin/pytest -x -q tests/test_bench_gpu_check.py   (~35 s on 2 cores)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


@functools.lru_cache(maxsize=None)
def _module():
    """bench/gpu_check.py as a module (bench/ is no package); registered before it runs, as
    its dataclasses need."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """(stdout, the JSON report) of ``gpu_check.py --cpu``."""
    out = tmp_path_factory.mktemp("gpu-check") / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_section_printed_and_nothing_failed(cpu_run):
    stdout, data = cpu_run
    for header in ("== gpu_check (cpu form)", "-- learner training", "-- HF transformers",
                   "-- logprobs", "MFU against: 0.1 TFLOP/s, a nominal CPU figure"):
        assert header in stdout, header
    assert data["form"] == "cpu" and data["failures"] == []
    assert any(line.startswith("TE spec rows: no CUDA") for line in data["skipped"])
    env = data["environment"]
    assert _finite_positive(env["peak_tflops"]) and _finite_positive(env["matmul_tflops"])
    assert env["versions"]["megatron-core"][0].isdigit(), env["versions"]


def test_learner_rows_time_and_measure_both_budgets(cpu_run):
    _, data = cpu_run
    module = _module()
    form = module.FORMS["cpu"]
    for model in form.models:
        rows = [r for r in data["train"] if r["model"] == model]
        assert [r["microbatch_tokens"] for r in rows] == list(form.budgets), model
        for r in rows:
            assert r["spec"] == "local" and r["dtype"] == "float32" and r["skipped_steps"] == 0
            assert len(r["step_times_s"]) == form.timed_steps
            for key in ("tokens_per_s", "mfu", "plan_gib", "measured_gib", "memory_ratio",
                        "memory_ratio_with_scores", "step_flops"):
                assert _finite_positive(r[key]), (model, key, r[key])
            assert r["plan"]["activations"] > 0 and r["plan"]["static"] < r["plan_gib"]
        assert _finite_positive(rows[0]["loss_step0"])
        # More tokens per microbatch: more activations on paper.
        assert rows[1]["plan_gib"] > rows[0]["plan_gib"]
    cut = [r for r in data["train"] if r["model"] in form.fit_layers]
    assert cut and all(0 < r["layers"] < r["full_layers"] and "layers: what fits" in r["note"]
                       for r in cut)


def test_hf_side_by_side_trains_the_same_checkpoint(cpu_run):
    _, data = cpu_run
    for h in data["hf"]:
        ours = next(r for r in data["train"] if r["model"] == h["model"])
        assert _finite_positive(h["tokens_per_s"]) and _finite_positive(h["ours_over_hf"])
        # Same weights, same batch, fp32: the first step's loss is the same model's loss.
        assert abs(ours["loss_step0"] - h["loss_step0"]) < 1e-4, (ours["loss_step0"], h)
    assert {h["model"] for h in data["hf"]} == set(_module().FORMS["cpu"].models)


def test_chunked_logprobs_equal_naive_at_full_vocab(cpu_run):
    _, data = cpu_run
    rows = data["logprobs"]
    assert {r["pass_"] for r in rows} == {"forward", "forward + backward"}
    assert all(r["vocab"] == 151_936 for r in rows)
    for r in rows:
        assert r["max_abs_diff"] <= 1e-4 and r["fp64_error"] <= 1e-4, r
        assert _finite_positive(r["time_s"]) and r["peak_extra_gib"] >= 0
    naive = next(r for r in rows if r["pass_"] == "forward" and r["variant"] == "naive")
    auto = next(r for r in rows if r["pass_"] == "forward" and r["chunk_default"])
    assert auto["peak_extra_gib"] < naive["peak_extra_gib"], (auto, naive)


def test_layers_that_fit_size_the_8b_to_one_gpu():
    from opd_megatron.plan.flops import NAMED_SHAPES

    module = _module()
    kwargs = dict(microbatch_tokens=8192, seq_len=2048, dtype="bfloat16")
    eight_b = NAMED_SHAPES["qwen3-8b"]
    fit = module.layers_that_fit(eight_b, memory_gib=140.0, **kwargs)
    assert 0 < fit < eight_b.num_layers
    # Flash attention (TE) keeps no scores: more layers fit.
    assert module.layers_that_fit(eight_b, memory_gib=140.0, spec="te", **kwargs) > fit
    assert module.layers_that_fit(eight_b, memory_gib=10_000.0, **kwargs) == eight_b.num_layers
    assert module.layers_that_fit(eight_b, memory_gib=1.0, **kwargs) == 0
    small = NAMED_SHAPES["qwen3-1.7b"]
    assert module.layers_that_fit(small, memory_gib=140.0, **kwargs) == small.num_layers


def test_peak_is_the_datasheet_dense_bf16_of_the_named_gpu():
    module = _module()
    assert module.peak_tflops("NVIDIA H200", None, True)[0] == 989.0
    assert module.peak_tflops("NVIDIA H100 80GB HBM3", None, True)[0] == 989.0
    assert module.peak_tflops("NVIDIA H100 PCIe", None, True)[0] == 756.0
    assert module.peak_tflops("Tesla T4", None, True)[0] is None
    assert module.peak_tflops("Tesla T4", 65.0, True)[0] == 65.0
    assert "not meaningful" in module.peak_tflops("CPU", None, False)[1]
