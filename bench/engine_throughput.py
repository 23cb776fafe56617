"""Rollout and teacher-scoring throughput of real SGLang servers on CPU, and prefix-cache reuse.

What it does: starts a student and a teacher SGLang server (tiny random Qwen3 models, fp32,
CPU), then, side by side in one run (variants alternate each round; best time of the rounds):
- rollouts, G samples per prompt: the client's request (one ``n=G`` request per prompt) vs G
  separate requests per prompt;
- teacher scoring of those rollouts: the client's request (``logprob_start_len = P - 1``; for
  prompts of >= 32 tokens the first sample of each group first, so the others reuse its cached
  prompt), the same with leader-first for every prompt length, and the naive request
  (``logprob_start_len = 0``, everything at once), checking they give the same logprobs;
- teacher scoring split into per-step calls with the prefix cache kept vs flushed before each
  call (``engines.flush_teacher_cache``, what makes resumed runs bit-identical).
It prints tokens/s, the prefix-cache hit rate (SGLang ``meta_info.cached_tokens`` over
``prompt_tokens``), the tokens the server actually prefilled per group against the ideal
(P + G*T: each prompt once), and the ratios. Prompts are the arithmetic task's, optionally
behind a k-shot prefix of solved examples (longer shared prompts, like chat/system prompts).

Run (~2-3 min on 2 cores, two server starts included):
    flock /tmp/opd-heavy.lock .venv/bin/python bench/engine_throughput.py
    flock /tmp/opd-heavy.lock .venv/bin/python bench/engine_throughput.py --shots 3 --samples 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opd_megatron.config.schema import EngineRoleConfig, EnginesConfig, ModelConfig  # noqa: E402
from opd_megatron.engines.client import CacheStats, EngineClient  # noqa: E402
from opd_megatron.engines.http import post_json  # noqa: E402
from opd_megatron.engines.launcher import launch_role  # noqa: E402
from opd_megatron.models.tiny import (STUDENT_SHAPE, TEACHER_SHAPE, build_tokenizer,  # noqa: E402
                                      save_random_model)
from opd_megatron.data.arithmetic import heldout_problems  # noqa: E402


CLIENT = "client default (P-1, waves if P>=32)"
LEADER_FIRST = "client, leader first for every P"
NAIVE = "naive: logprob_start_len=0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_prompts(num_prompts: int, shots: int) -> List[List[int]]:
    tok = build_tokenizer()
    problems = heldout_problems(num_prompts + shots)
    prefix = "".join(p.prompt + p.solution + "\n" for p in problems[:shots])
    return [[tok.bos_token_id] + tok.encode(prefix + p.prompt, add_special_tokens=False)
            for p in problems[shots:]]


def _cache_fields(stats: CacheStats, seconds: float, num_tokens: int) -> Dict[str, float]:
    return {"seconds": seconds, "tokens_per_s": num_tokens / seconds, "hit_rate": stats.hit_rate,
            "prefilled_tokens": stats.prompt_tokens - stats.cached_tokens}


def bench_rollouts(client: EngineClient, prompts, args) -> Dict[str, Dict[str, float]]:
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, ignore_eos=True)
    results: Dict[str, Dict[str, float]] = {}
    for _ in range(args.rounds):
        repeated = [p for p in prompts for _ in range(args.samples)]
        for name, batch, g in (("n=G request per prompt", prompts, args.samples),
                               ("G separate requests", repeated, 1)):
            client.post_each("/flush_cache", {})
            client.stats = CacheStats()
            start = time.perf_counter()
            rollouts = client.generate(batch, samples_per_prompt=g, **kwargs)
            seconds = time.perf_counter() - start
            num_tokens = sum(len(r.response_ids) for r in rollouts)
            row = _cache_fields(client.stats, seconds, num_tokens)
            if name not in results or seconds < results[name]["seconds"]:
                results[name] = row
    return results


async def _naive_score(client: EngineClient, rollouts) -> List[List[float]]:
    import aiohttp

    payloads = [{"input_ids": r.prompt_ids + r.response_ids, "return_logprob": True,
                 "sampling_params": {"max_new_tokens": 0}, "logprob_start_len": 0}
                for r in rollouts]
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(post_json(session, client.urls, "/generate", p,
                                                   client.policy) for p in payloads))
    out = []
    for r, answer in zip(rollouts, answers):
        client.stats.add(answer["meta_info"])
        entries = answer["meta_info"]["input_token_logprobs"]
        out.append([e[0] for e in entries[len(r.prompt_ids):]])  # entry j scores token j
    return out


def bench_scoring(client: EngineClient, rollouts, args) -> Dict[str, Dict[str, float]]:
    num_tokens = sum(len(r.response_ids) for r in rollouts)
    results: Dict[str, Dict[str, float]] = {}
    max_diff = 0.0
    for _ in range(args.rounds):
        for name, min_shared in ((CLIENT, client.min_shared_prompt_tokens),
                                 (LEADER_FIRST, 1), (NAIVE, None)):
            client.post_each("/flush_cache", {})
            client.stats = CacheStats()
            start = time.perf_counter()
            if min_shared is not None:
                default = client.min_shared_prompt_tokens
                client.min_shared_prompt_tokens = min_shared
                client.score(rollouts)
                client.min_shared_prompt_tokens = default
                ours = [list(r.teacher_logprobs) for r in rollouts]
            else:
                naive = asyncio.run(_naive_score(client, rollouts))
            seconds = time.perf_counter() - start
            row = _cache_fields(client.stats, seconds, num_tokens)
            if name not in results or seconds < results[name]["seconds"]:
                results[name] = row
        max_diff = max(max_diff, max(abs(a - b) for x, y in zip(ours, naive) for a, b in zip(x, y)))
    results["max |client - naive| logprob"] = {"value": max_diff}
    return results


def bench_flush_per_call(client: EngineClient, rollouts, args) -> Dict[str, Dict[str, float]]:
    """What ``engines.flush_teacher_cache`` costs: the rollouts split into ``--steps`` calls
    (one per training step, different prompts behind the same k-shot prefix), scored with the
    cache kept warm across calls vs flushed before each call, as the session does."""
    num_tokens = sum(len(r.response_ids) for r in rollouts)
    per_step = -(-len({r.group_id for r in rollouts}) // args.steps)
    calls = [[r for r in rollouts if r.group_id // per_step == s] for s in range(args.steps)]
    results: Dict[str, Dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, flush_each in (("cache kept across calls", False), ("flushed before each call", True)):
            client.flush_cache()
            client.stats = CacheStats()
            start = time.perf_counter()
            for call in calls:
                if flush_each:
                    client.flush_cache()
                client.score(call)
            seconds = time.perf_counter() - start
            row = _cache_fields(client.stats, seconds, num_tokens)
            if name not in results or seconds < results[name]["seconds"]:
                results[name] = row
    return results


def _print_table(title: str, rows: Dict[str, Dict[str, float]], ideal_prefill) -> None:
    """``prefilled`` = prompt tokens not served from the cache, as the answers report them."""
    print(f"\n{title}")
    print(f"  {'variant':42s} {'seconds':>8s} {'tokens/s':>9s} {'cache hit':>9s} "
          f"{'prefilled':>9s} {'/ ideal':>7s}")
    for name, row in rows.items():
        if "seconds" not in row:
            print(f"  {name}: {row['value']:.2e}")
            continue
        print(f"  {name:42s} {row['seconds']:8.3f} {row['tokens_per_s']:9.0f} "
              f"{row['hit_rate']:9.1%} {row['prefilled_tokens']:9.0f} "
              + (f"{row['prefilled_tokens'] / ideal_prefill:7.2f}" if ideal_prefill
                 else f"{'-':>7s}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="G, samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--shots", type=int, default=2, help="solved examples before each prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="calls the flush comparison splits the rollouts into")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    prompts = make_prompts(args.prompts, args.shots)
    work = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    engines = EnginesConfig(device="cpu", startup_timeout_s=300)
    role = EngineRoleConfig(max_total_tokens=32768, dtype="float32")
    groups = []
    try:
        for name, shape in (("student", STUDENT_SHAPE), ("teacher", TEACHER_SHAPE)):
            model_dir = save_random_model(work / name, shape, seed=1)
            groups.append(launch_role(name, ModelConfig(path=str(model_dir)), role, engines,
                                      work / "logs", first_port=_free_port()))
        student, teacher = (EngineClient(g.request_urls) for g in groups)
        prompt_tokens = sum(len(p) for p in prompts)
        gen_tokens = args.prompts * args.samples * args.max_new_tokens
        print(f"{args.prompts} prompts x G={args.samples}, {args.shots}-shot prompts of "
              f"{prompt_tokens / args.prompts:.0f} tokens on average, "
              f"{args.max_new_tokens} new tokens each; fp32, CPU; best of {args.rounds} rounds")
        rollout_rows = bench_rollouts(student, prompts, args)
        _print_table("Rollouts (student server), tokens/s = generated tokens",
                     rollout_rows, ideal_prefill=None)
        print("  (n=G: SGLang prefills the shared prompt once in an internal request that no "
              "answer reports, so 'prefilled' counts only the per-sample remainder)")
        rollouts = student.generate(prompts, samples_per_prompt=args.samples,
                                    max_new_tokens=args.max_new_tokens, ignore_eos=True)
        scoring_rows = bench_scoring(teacher, rollouts, args)
        _print_table("Teacher scoring, tokens/s = scored response tokens",
                     scoring_rows, ideal_prefill=prompt_tokens + gen_tokens)
        flush_rows = bench_flush_per_call(teacher, rollouts, args)
        _print_table(f"Teacher scoring in {args.steps} calls (steps), tokens/s = scored response tokens",
                     flush_rows, ideal_prefill=prompt_tokens + gen_tokens)
        r_ours, r_sep = rollout_rows["n=G request per prompt"], rollout_rows["G separate requests"]
        s_ours, s_lead, s_naive = (scoring_rows[CLIENT], scoring_rows[LEADER_FIRST],
                                   scoring_rows[NAIVE])
        print("\nRatios (client's request / alternative):")
        print(f"  rollouts: speed x{r_ours['tokens_per_s'] / r_sep['tokens_per_s']:.2f}, "
              f"cache hit {r_ours['hit_rate']:.1%} vs {r_sep['hit_rate']:.1%}")
        for label, row in (("scoring, client default / naive", s_ours),
                           ("scoring, leader first / naive", s_lead)):
            print(f"  {label}: speed x{row['tokens_per_s'] / s_naive['tokens_per_s']:.2f}, "
                  f"prefilled tokens x{row['prefilled_tokens'] / s_naive['prefilled_tokens']:.2f}")
        kept, flushed = flush_rows["cache kept across calls"], flush_rows["flushed before each call"]
        print(f"  teacher flush before each call / cache kept: speed x"
              f"{flushed['tokens_per_s'] / kept['tokens_per_s']:.2f}, prefilled tokens x"
              f"{flushed['prefilled_tokens'] / max(kept['prefilled_tokens'], 1):.2f}")
        if args.json:
            args.json.write_text(json.dumps({"rollouts": rollout_rows, "scoring": scoring_rows,
                                             "flush_per_call": flush_rows,
                                             "args": {k: str(v) for k, v in vars(args).items()}},
                                            indent=2))
    finally:
        for group in groups:
            group.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
