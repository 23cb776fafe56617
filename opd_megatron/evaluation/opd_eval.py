"""``opd eval``: evaluate a model behind an SGLang server on a benchmark.

    opd eval --benchmark aime24 --preset qwen3 --server-url http://node1:31000 \\
        --tokenizer Qwen/Qwen3-8B --chat-template tokenizer
    opd eval --benchmark math500 --data-file math500.jsonl --limit 50 --server-url URL --tokenizer DIR
    opd eval --benchmark arithmetic --server-url http://127.0.0.1:31000 --limit 200

Prints avg@k and pass@k and, with ``--output``, writes the full result as JSON. Requests go
through ``opd_megatron.engines.EngineClient`` (the run's own client), prompts are encoded
like the training prompts (``opd_megatron.data.prompts.encode_prompt``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence

from opd_megatron.errors import ConfigError
from opd_megatron.evaluation.benchmarks import BENCHMARKS, load_benchmark
from opd_megatron.evaluation.suite import (PROTOCOLS, GenerateFn, SamplingParams, client_generate_fn, evaluate,
                                            preset, protocol_line)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opd eval", description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", required=True, help=f"one of {', '.join(BENCHMARKS)}")
    p.add_argument("--preset", default="none", help=f"evaluation protocol: none | {' | '.join(PROTOCOLS)}")
    p.add_argument("--server-url", help="SGLang server (or router) URL of the model to evaluate")
    p.add_argument("--tokenizer", help="tokenizer dir/name (default: the tiny char tokenizer, "
                                       "arithmetic only)")
    p.add_argument("--chat-template", default="none", choices=["none", "tokenizer"],
                   help="apply the tokenizer's chat template to each prompt")
    p.add_argument("--data-file", help="local JSON/JSONL/Parquet copy in the dataset's schema")
    p.add_argument("--limit", type=int, help="first N problems only")
    p.add_argument("--samples", type=int, help="override samples per problem")
    p.add_argument("--max-new-tokens", type=int, help="override response length")
    p.add_argument("--temperature", type=float, help="override temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and GPQA option order)")
    p.add_argument("--output", help="write the result JSON here")
    return p


def engine_generate_fn(server_url: str, tokenizer, chat_template: str,
                       model_dir: Optional[str] = None, thinking: Optional[bool] = None) -> GenerateFn:
    """A generate_fn backed by the project's SGLang client; ``model_dir`` (the tokenizer's
    directory, when it holds the model's config.json) tells the padded output rows, which
    are then never sampled."""
    try:
        from opd_megatron.config.schema import EnginesConfig
        from opd_megatron.engines import EngineClient
    except ImportError as err:
        raise ConfigError(f"--server-url needs opd_megatron.engines ({err}); install the engines "
                          "requirements (requirements/sglang-cpu.txt)") from None
    config = Path(model_dir or "") / "config.json"
    width = json.loads(config.read_text()).get("vocab_size") if model_dir and config.is_file() else None
    client = EngineClient.from_config([server_url], EnginesConfig(), full_vocab_size=len(tokenizer),
                                      logits_width=width)
    return client_generate_fn(client, tokenizer, chat_template, thinking=thinking)


def _tokenizer(path: Optional[str], benchmark: str):
    if path:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"--tokenizer {path}: cannot load ({str(err)[:160]}); pass a "
                              "tokenizer directory or hub name") from None
    if benchmark != "arithmetic":
        raise ConfigError(f"--tokenizer is required for {benchmark} (the model's tokenizer dir or name)")
    from opd_megatron.models.tiny import build_tokenizer

    return build_tokenizer()


def format_result(result, preset_name: str = "none") -> str:
    ks = ", ".join(f"pass@{k} {100 * v:.1f}" for k, v in result.pass_at_k.items())
    return (f"{result.benchmark}: {result.num_problems} problems x {result.num_samples} samples: "
            f"avg@{result.num_samples} {100 * result.avg_at_k:.1f} | {ks}\n"
            f"  protocol: {protocol_line(preset_name, result.benchmark, result.sampling)}")


def cli_main(argv: Sequence[str], generate_fn: Optional[GenerateFn] = None) -> int:
    """`opd eval ...`; ``generate_fn`` replaces the server (used by the loop and tests)."""
    args = _parser().parse_args(list(argv))
    sampling = preset(args.preset, args.benchmark, num_samples=args.samples, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, seed=args.seed)
    protocol = PROTOCOLS.get(args.preset)
    if generate_fn is None and not args.server_url:
        raise ConfigError("opd eval: pass --server-url URL of an SGLang server serving the model")
    bench = load_benchmark(args.benchmark, data_files=args.data_file, limit=args.limit, seed=args.seed,
                           choice_prompt=protocol.choice_prompt if protocol else None)
    if generate_fn is None:
        generate_fn = engine_generate_fn(args.server_url, _tokenizer(args.tokenizer, args.benchmark),
                                         args.chat_template, args.tokenizer,
                                         thinking=protocol.thinking if protocol else None)
    result = evaluate(bench, generate_fn, sampling)
    print(format_result(result, args.preset))
    if args.output:
        record = dict(result.as_dict(), protocol=protocol_line(args.preset, args.benchmark, sampling))
        Path(args.output).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    from opd_megatron.errors import cli_entry

    raise SystemExit(cli_entry(cli_main))
