"""Run a benchmark through any sampler: sampling presets, ``evaluate`` and its result.

The sampler is a ``generate_fn(prompts, n, sampling) -> list[list[str]]`` (n response texts
per prompt), so this module never imports an engine: the loop passes one backed by its
SGLang student servers, ``opd eval`` one backed by a server URL, tests a local function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from opd_megatron.errors import ConfigError
from opd_megatron.evaluation.benchmarks import Benchmark
from opd_megatron.evaluation.pass_at_k import avg_at_k, mean_pass_at_k


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    top_k: int = -1
    """-1 disables top-k."""
    num_samples: int = 1
    """Samples per problem (k of avg@k)."""
    max_new_tokens: int = 48
    seed: int = 0


@dataclass(frozen=True)
class Protocol:
    """A published evaluation protocol: sampling per benchmark, thinking mode, the choice prompt,
    and where each setting is documented (``source``, printed beside every number it produced)."""

    name: str
    source: str
    default: SamplingParams
    benchmarks: Tuple[Tuple[str, SamplingParams], ...] = ()
    """Per-benchmark sampling where the document sets it apart (AIME's length and samples)."""
    thinking: Optional[bool] = None
    """``enable_thinking`` for the chat template; None leaves the template's default."""
    choice_prompt: Optional[str] = None
    """The multiple-choice (GPQA) prompt; None: benchmarks.GPQA_PROMPT."""

    def sampling(self, benchmark: Optional[str] = None) -> SamplingParams:
        return dict(self.benchmarks).get(benchmark or "", self.default)


_QWEN3_THINKING = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, num_samples=1, max_new_tokens=32768)
_AIME = ("aime24", "aime25")
# Qwen's model-card instruction for multiple-choice benchmarks (answer in a JSON "answer" field).
QWEN_CHOICE_PROMPT = ("{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}\n\nPlease show your choice in the "
                      '`answer` field with only the choice letter, e.g., `"answer": "C"`.')
PROTOCOLS: Dict[str, Protocol] = {
    "qwen3": Protocol(
        "qwen3",
        "Qwen3 technical report, evaluation of thinking models: thinking mode, T 0.6, top-p 0.95, top-k 20, "
        "32,768 output tokens (38,912 for AIME'24/'25), AIME pass@1 averaged over 64 samples per problem; "
        "the report states no sample count for MATH500/GPQA-Diamond/IFEval (1 here); prompts from Qwen's "
        "model card (math: reason step by step, answer in \\boxed{}; choice: the JSON answer field)",
        _QWEN3_THINKING, tuple((b, replace(_QWEN3_THINKING, num_samples=64, max_new_tokens=38912)) for b in _AIME),
        thinking=True, choice_prompt=QWEN_CHOICE_PROMPT),
    "tml": Protocol(
        "tml",
        "TML blog (On-Policy Distillation): AIME'24 averaged over 32 samples per problem; the blog gives no "
        "other sampling setting, so thinking mode, T 0.6, top-p 0.95, top-k 20 and the lengths follow the "
        "Qwen3 report (its student is Qwen3-8B-Base after reasoning SFT)",
        _QWEN3_THINKING, tuple((b, replace(_QWEN3_THINKING, num_samples=32, max_new_tokens=38912)) for b in _AIME),
        thinking=True, choice_prompt=QWEN_CHOICE_PROMPT),
}

GenerateFn = Callable[[List[str], int, SamplingParams], List[List[str]]]


def preset(name: str, benchmark: Optional[str] = None, **overrides) -> SamplingParams:
    """A protocol's sampling for ``benchmark`` ('none': defaults), with fields overridden."""
    if name == "none":
        base = SamplingParams()
    elif name in PROTOCOLS:
        base = PROTOCOLS[name].sampling(benchmark)
    else:
        raise ConfigError(f"unknown eval preset {name!r}; use one of none, {', '.join(PROTOCOLS)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def sampling_from_eval_config(eval_cfg, seed: int = 0, benchmark: Optional[str] = None) -> SamplingParams:
    """SamplingParams from a schema EvalConfig: the preset's for ``benchmark`` when set, else its own fields."""
    if eval_cfg.preset != "none":
        return preset(eval_cfg.preset, benchmark, seed=seed)
    return SamplingParams(temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                          top_k=eval_cfg.top_k, num_samples=eval_cfg.samples_per_prompt,
                          max_new_tokens=eval_cfg.max_new_tokens, seed=seed)


def describe_sampling(s: SamplingParams) -> str:
    return (f"T {s.temperature}, top-p {s.top_p}, top-k {s.top_k}, {s.num_samples} samples, "
            f"max {s.max_new_tokens} tokens")


def protocol_line(preset_name: str, benchmark: str, sampling: SamplingParams) -> str:
    """Which protocol produced a benchmark's number: the preset, what it sets, where it is documented."""
    if preset_name in PROTOCOLS:
        p = PROTOCOLS[preset_name]
        mode = "thinking" if p.thinking else "template default"
        return f"{p.name} ({mode}; {describe_sampling(sampling)}): {p.source}"
    return f"own settings (eval.preset none; template default; {describe_sampling(sampling)})"


@dataclass
class EvalResult:
    benchmark: str
    num_problems: int
    num_samples: int
    avg_at_k: float
    """Mean accuracy over all samples (pass@1 estimated from k samples)."""
    pass_at_k: Dict[int, float]
    """Unbiased pass@k for each requested k <= num_samples."""
    num_correct: List[int]
    """Correct samples per problem, in problem order."""
    sampling: SamplingParams

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return d


def default_ks(num_samples: int) -> List[int]:
    """1, 2, 4, ... up to num_samples (always including num_samples)."""
    ks, k = [], 1
    while k < num_samples:
        ks.append(k)
        k *= 2
    return ks + [num_samples]


def evaluate(benchmark: Benchmark, generate_fn: GenerateFn, sampling: SamplingParams, *,
             ks: Optional[Sequence[int]] = None, batch_prompts: int = 64) -> EvalResult:
    """Sample ``sampling.num_samples`` responses per problem, grade them, reduce to metrics.

    Prompts go to ``generate_fn`` in batches of ``batch_prompts`` so a 500-problem x 64-sample
    eval never holds every request at once.
    """
    n = sampling.num_samples
    if n < 1:
        raise ConfigError(f"eval samples per problem must be >= 1, got {n}")
    ks = sorted(set(ks or default_ks(n)))
    if ks[0] < 1 or ks[-1] > n:
        raise ConfigError(f"pass@k needs 1 <= k <= samples ({n}); got k={ks}")
    problems = benchmark.problems
    if not problems:
        raise ConfigError(f"{benchmark.name}: no problems to evaluate")
    num_correct: List[int] = []
    for start in range(0, len(problems), batch_prompts):
        chunk = problems[start:start + batch_prompts]
        outputs = generate_fn([p.prompt for p in chunk], n, sampling)
        if len(outputs) != len(chunk) or any(len(o) != n for o in outputs):
            raise ValueError(f"generate_fn returned {[len(o) for o in outputs]} responses for "
                             f"{len(chunk)} prompts x {n} samples")
        for p, responses in zip(chunk, outputs):
            num_correct.append(sum(bool(benchmark.grade(r, p.answer)) for r in responses))
    counts = [n] * len(problems)
    return EvalResult(benchmark=benchmark.name, num_problems=len(problems), num_samples=n,
                      avg_at_k=avg_at_k(counts, num_correct),
                      pass_at_k={k: mean_pass_at_k(counts, num_correct, k) for k in ks},
                      num_correct=num_correct, sampling=sampling)


def evaluate_benchmarks(eval_cfg, generate_fn: GenerateFn, *, seed: int = 0,
                        data_files: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """The loop's hook for ``eval.benchmarks``: flat metrics for metrics.jsonl.

    Returns ``{"<benchmark>_avg_at_k": ..., "<benchmark>_pass_at_<k>": ...}`` for each
    benchmark of the EvalConfig, sampled with its preset (or its own fields). ``data_files``
    (default: the EvalConfig's ``benchmark_files``) maps a benchmark to a local file in its
    public schema, read instead of the hub.
    """
    from opd_megatron.evaluation.benchmarks import load_benchmark

    if data_files is None:
        data_files = dict(getattr(eval_cfg, "benchmark_files", None) or {})
    protocol = PROTOCOLS.get(eval_cfg.preset)
    out: Dict[str, float] = {}
    for name in eval_cfg.benchmarks:
        bench = load_benchmark(name, data_files=(data_files or {}).get(name), seed=seed,
                               choice_prompt=protocol.choice_prompt if protocol else None)
        result = evaluate(bench, generate_fn, sampling_from_eval_config(eval_cfg, seed=seed, benchmark=name))
        out[f"{name}_avg_at_k"] = result.avg_at_k
        out.update({f"{name}_pass_at_{k}": v for k, v in result.pass_at_k.items()})
    return out


def client_generate_fn(client, tokenizer, chat_template: str,
                       stop_token_ids: Optional[List[int]] = None, thinking: Optional[bool] = None) -> GenerateFn:
    """A generate_fn over an EngineClient (``opd eval`` and the loop's eval.benchmarks);
    ``stop_token_ids`` also end a response (the id of ``data.eos_token`` when it is set);
    ``thinking`` is the chat template's ``enable_thinking`` (None: the template's default)."""
    from opd_megatron.data import encode_prompt

    def generate(prompts: List[str], n: int, s: SamplingParams) -> List[List[str]]:
        ids = [encode_prompt(tokenizer, p, chat_template, thinking=thinking) for p in prompts]
        rollouts = client.generate(ids, samples_per_prompt=n, max_new_tokens=s.max_new_tokens,
                                   temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                   seed=s.seed, stop_token_ids=stop_token_ids)
        out: List[List[str]] = [[] for _ in prompts]
        for ro in rollouts:
            out[ro.group_id].append(tokenizer.decode(ro.response_ids, skip_special_tokens=True))
        return out

    return generate
