"""Evaluation: benchmarks, grading, avg@k / pass@k, presets, and ``opd eval``.

    from opd_megatron.evaluation import load_benchmark, evaluate, preset
    result = evaluate(load_benchmark("aime24"), generate_fn, preset("qwen3", "aime24"))

``generate_fn(prompts: list[str], n: int, sampling: SamplingParams) -> list[list[str]]``
returns n response texts per prompt; the evaluator never imports an engine.
"""

from opd_megatron.data.grading import extract_choice, final_text, grade_choice, grade_math
from opd_megatron.evaluation.benchmarks import (BENCHMARKS, HF_SOURCES, Benchmark, EvalProblem,
                                                arithmetic_benchmark, load_benchmark)
from opd_megatron.evaluation.pass_at_k import avg_at_k, mean_pass_at_k, pass_at_k
from opd_megatron.evaluation.suite import (PROTOCOLS, EvalResult, Protocol, SamplingParams,
                                            client_generate_fn, evaluate, evaluate_benchmarks, preset,
                                            sampling_from_eval_config)

__all__ = ["BENCHMARKS", "HF_SOURCES", "Benchmark", "EvalProblem", "arithmetic_benchmark",
           "load_benchmark", "extract_choice", "final_text", "grade_choice", "grade_math",
           "avg_at_k", "mean_pass_at_k", "pass_at_k", "PROTOCOLS", "Protocol", "EvalResult",
           "SamplingParams",
           "client_generate_fn", "evaluate", "evaluate_benchmarks", "preset", "sampling_from_eval_config"]
