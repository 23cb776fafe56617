"""Benchmarks loaded from local fixtures in the HF schemas (same datasets code path),
evaluate() with a sampler function, presets, and `opd eval`."""

from __future__ import annotations

import json
import re

import pytest

from opd_megatron.errors import ConfigError
from opd_megatron.evaluation import (PROTOCOLS, SamplingParams, arithmetic_benchmark, evaluate,
                                     load_benchmark, preset, sampling_from_eval_config)
from opd_megatron.evaluation.opd_eval import cli_main

AIME_ROWS = [{"id": 60 + i, "problem": f"Find {i} plus {i}.", "solution": "...", "answer": str(2 * i),
              "url": "u", "year": "2024"} for i in range(6)]
MATH_ROWS = [{"problem": "Compute 1/2 + 1/6.", "solution": "...", "answer": r"\frac{2}{3}",
              "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
             {"problem": "What is 3^2?", "solution": "...", "answer": "9", "subject": "Algebra",
              "level": 1, "unique_id": "test/algebra/2.json"}]
GPQA_ROWS = [{"Question": f"Which particle is number {i}?", "Correct Answer": f"right {i}",
              "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
              "Incorrect Answer 3": f"wrong c{i}", "Record ID": f"rec{i}"} for i in range(8)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _answer_of(prompt: str) -> int:
    i = int(re.search(r"Find (\d+) plus", prompt).group(1))
    return 2 * i


def test_aime_fixture_loads_and_evaluates(tmp_path):
    bench = load_benchmark("aime24", data_files=_jsonl(tmp_path / "aime.jsonl", AIME_ROWS))
    assert [p.id for p in bench.problems] == [str(60 + i) for i in range(6)]
    assert "\\boxed{}" in bench.problems[0].prompt

    def sampler(prompts, n, sampling):
        # Even problems: all n right; odd problems: right on the first sample only.
        out = []
        for p in prompts:
            a = _answer_of(p)
            right, wrong = f"<think>...</think>\\boxed{{{a}}}", f"\\boxed{{{a + 1}}}"
            out.append([right] * n if a % 4 == 0 else [right] + [wrong] * (n - 1))
        return out

    res = evaluate(bench, sampler, SamplingParams(num_samples=4), batch_prompts=4)
    assert res.num_correct == [4, 1, 4, 1, 4, 1]
    assert res.avg_at_k == pytest.approx((3 * 1 + 3 * 0.25) / 6)
    assert res.pass_at_k[4] == 1.0 and set(res.pass_at_k) == {1, 2, 4}
    assert res.pass_at_k[1] == pytest.approx(res.avg_at_k)


def test_math500_and_limit(tmp_path):
    bench = load_benchmark("math500", data_files=_jsonl(tmp_path / "m.jsonl", MATH_ROWS), limit=1)
    assert len(bench.problems) == 1 and bench.problems[0].id == "test/algebra/1.json"
    res = evaluate(bench, lambda ps, n, s: [[r"\boxed{\dfrac{4}{6}}"] * n for _ in ps], SamplingParams())
    assert res.avg_at_k == 1.0


def test_gpqa_shuffle_is_seeded_and_gold_points_at_the_correct_option(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", GPQA_ROWS)
    a, b = load_benchmark("gpqa_diamond", data_files=path, seed=0), load_benchmark("gpqa_diamond", data_files=path, seed=0)
    other = load_benchmark("gpqa_diamond", data_files=path, seed=1)
    assert [p.answer for p in a.problems] == [p.answer for p in b.problems]
    assert [p.prompt for p in a.problems] != [p.prompt for p in other.problems]
    assert len({p.answer for p in a.problems}) > 1  # not always 'A'
    for i, p in enumerate(a.problems):
        assert f"{p.answer}) right {i}" in p.prompt

    def sampler(prompts, n, s):
        out = []
        for prompt in prompts:
            letter = re.search(r"\n([A-D])\) right", prompt).group(1)
            out.append([f"thinking...\nAnswer: {letter}"] * n)
        return out

    assert evaluate(a, sampler, SamplingParams(num_samples=2)).avg_at_k == 1.0


def test_arithmetic_benchmark_uses_the_task_grader():
    from opd_megatron.data.arithmetic import solve

    bench = arithmetic_benchmark(20)
    solved = lambda ps, n, s: [[solve(p[:-1]).solution] * n for p in ps]  # noqa: E731
    assert evaluate(bench, solved, SamplingParams()).avg_at_k == 1.0
    wrong = lambda ps, n, s: [["#100"] * n for _ in ps]  # noqa: E731  (answers are 0-99)
    assert evaluate(bench, wrong, SamplingParams()).avg_at_k == 0.0


def test_protocols_per_benchmark_and_eval_config():
    from opd_megatron.config.schema import EvalConfig

    aime, math500 = preset("qwen3", "aime24"), preset("qwen3", "math500")
    assert (aime.temperature, aime.top_p, aime.top_k, aime.num_samples, aime.max_new_tokens) == (0.6, 0.95, 20, 64, 38912)
    assert (math500.num_samples, math500.max_new_tokens) == (1, 32768)  # the report's length outside AIME
    assert preset("tml", "aime24").num_samples == 32 and PROTOCOLS["qwen3"].thinking is True
    assert preset("qwen3", "aime25", num_samples=8, seed=3).num_samples == 8
    assert sampling_from_eval_config(EvalConfig(preset="tml"), benchmark="aime24").num_samples == 32
    own = sampling_from_eval_config(EvalConfig(samples_per_prompt=3, temperature=1.0), benchmark="aime24")
    assert (own.num_samples, own.temperature) == (3, 1.0)
    with pytest.raises(ConfigError, match="unknown eval preset"):
        preset("qwen4")


def test_each_number_names_its_protocol(tmp_path):
    """The loop's hook samples each benchmark with its protocol's settings and prompt; the report
    puts the protocol beside every benchmark number; opd eval prints it and writes it."""
    from opd_megatron.config.schema import EvalConfig
    from opd_megatron.evaluation import evaluate_benchmarks
    from opd_megatron.report.render import _benchmark_section

    rows = [{"Question": "Which?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
             "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}]
    files = {"aime24": _jsonl(tmp_path / "a.jsonl", AIME_ROWS), "gpqa_diamond": _jsonl(tmp_path / "g.jsonl", rows)}
    seen = {}

    def sampler(prompts, n, s):
        seen.setdefault("prompts", []).extend(prompts)
        seen.setdefault("samples", []).append(s.num_samples)
        return [["no"] * n for _ in prompts]

    cfg = EvalConfig(benchmarks=["aime24", "gpqa_diamond"], preset="qwen3")
    out = evaluate_benchmarks(cfg, sampler, data_files=files)
    assert seen["samples"] == [64, 1] and set(out) >= {"aime24_avg_at_k", "gpqa_diamond_avg_at_k"}
    assert '`"answer": "C"`' in seen["prompts"][-1]  # Qwen's multiple-choice instruction
    records = [{"step": 0, **out}, {"step": 5, **out}]
    table = "\n".join(_benchmark_section(records, {"eval": {"preset": "qwen3"}}))
    assert "| aime24 | 0.0% (step 0) | 0.0% (step 5) | qwen3 (thinking; T 0.6, top-p 0.95, top-k 20, 64 samples, " \
           "max 38912 tokens): Qwen3 technical report" in table
    assert "gpqa_diamond" in table and "1 samples, max 32768 tokens" in table
    own = "\n".join(_benchmark_section(records, {"eval": {"preset": "none", "temperature": 1.0, "top_p": 1.0,
                                                          "top_k": -1, "samples_per_prompt": 2, "max_new_tokens": 9}}))
    assert "own settings (eval.preset none; template default; T 1.0, top-p 1.0, top-k -1, 2 samples, max 9" in own
    assert _benchmark_section([{"step": 0, "accuracy": 0.5}], {}) == ["No benchmarks evaluated (eval.benchmarks is empty)."]


def test_evaluate_benchmarks_hook_for_the_loop(tmp_path):
    from opd_megatron.config.schema import EvalConfig
    from opd_megatron.evaluation import evaluate_benchmarks

    cfg = EvalConfig(benchmarks=["aime24", "math500"], samples_per_prompt=2)
    files = {"aime24": _jsonl(tmp_path / "a.jsonl", AIME_ROWS), "math500": _jsonl(tmp_path / "m.jsonl", MATH_ROWS)}
    sampler = lambda ps, n, s: [[r"\boxed{9}", "no"] for _ in ps]  # noqa: E731
    out = evaluate_benchmarks(cfg, sampler, data_files=files)
    assert out["math500_avg_at_k"] == pytest.approx(0.25) and out["math500_pass_at_2"] == pytest.approx(0.5)
    assert out["aime24_avg_at_k"] == 0.0 and set(out) >= {"aime24_pass_at_1", "aime24_pass_at_2"}


def test_bad_inputs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'math500'"):
        load_benchmark("math-500")
    with pytest.raises(ConfigError, match="lacks 'problem'/'answer'"):
        load_benchmark("aime25", data_files=_jsonl(tmp_path / "x.jsonl", [{"question": "q"}]))
    with pytest.raises(ConfigError, match="data-file"):
        load_benchmark("math500", data_files=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="server-url"):
        cli_main(["--benchmark", "arithmetic"])
    bench = arithmetic_benchmark(2)
    with pytest.raises(ValueError, match="responses"):
        evaluate(bench, lambda ps, n, s: [["x"]], SamplingParams())


def test_cli_with_injected_sampler_writes_json(tmp_path, capsys):
    from opd_megatron.data.arithmetic import solve

    seen = {}

    def sampler(prompts, n, s):
        seen["sampling"] = s
        return [[solve(p[:-1]).solution] * (n - 1) + ["#0"] for p in prompts]

    out = tmp_path / "r.json"
    code = cli_main(["--benchmark", "arithmetic", "--preset", "tml", "--samples", "4", "--limit", "10",
                     "--output", str(out)], generate_fn=sampler)
    assert code == 0
    assert seen["sampling"].temperature == 0.6 and seen["sampling"].num_samples == 4
    data = json.loads(out.read_text())
    assert data["num_problems"] == 10 and data["pass_at_k"]["4"] == 1.0
    assert data["avg_at_k"] == pytest.approx(0.75)
    assert data["protocol"].startswith("tml (thinking; T 0.6, top-p 0.95, top-k 20, 4 samples")
    assert "avg@4" in capsys.readouterr().out


def test_offline_hub_load_is_a_one_line_exit_2():
    """Without a --data-file and without the Hub, `opd eval` names the dataset and the fix."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "opd_megatron.evaluation.opd_eval", "--benchmark", "aime24",
                           "--server-url", "http://127.0.0.1:9"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "HuggingFaceH4/aime_2024" in lines[0] and "--data-file" in lines[0]
