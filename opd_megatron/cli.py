"""The ``opd`` command line (also ``python -m opd_megatron``).

    opd run RECIPE [key=value ...]        run a recipe (writes runs/<name>/)
    opd run RECIPE --rehearse             the recipe shrunk to this machine, every stage
    opd validate RECIPE [key=value ...]   resolve + validate; print the config and the plan
                                          (no weights needed: shapes from flops_name)
    opd fetch RECIPE [--models]           hub datasets, benchmarks (and models) into the cache
                                          that runs read with the hub offline
    opd convert ...                       HF <-> Megatron checkpoints (opd convert -h)
    opd compare RECIPE [key=value ...]    the compute-efficiency table: SFT ladder, arms to a target
    opd eval ...                          evaluate a model behind an SGLang server
    opd flops ...                         FLOPs account (opd flops -h)
    opd report RUN_DIR | --compare RUN...  the reproducibility report

Exit codes: 0 success, 2 bad input (one line on stderr naming the key or file; nothing
written), 1 runtime failure, 3 preempted (checkpoint written; rerun to resume).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from opd_megatron.errors import EXIT_OK, cli_entry
from opd_megatron.plan.budget import DEFAULT_MFU, DEFAULT_SAMPLING_MFU

# Subcommands owned by other modules: name -> (module, help).
DELEGATED = {
    "compare": ("opd_megatron.run.comparison", "the compute-efficiency table: SFT ladder, then each arm to a target accuracy, seeds"),
    "continual": ("opd_megatron.run.continual", "mid-train on new documents, then OPD from an earlier checkpoint; rounds"),
    "convert": ("opd_megatron.learner.convert", "HF <-> Megatron checkpoint conversion"),
    "fetch": ("opd_megatron.run.fetch", "download a recipe's hub datasets, benchmarks (--models: models) into the hub cache"),
    "eval": ("opd_megatron.evaluation.opd_eval", "evaluate a model (AIME/MATH500/GPQA/tiny task)"),
    "flops": ("opd_megatron.plan.flops", "FLOPs account for models and token counts"),
    "report": ("opd_megatron.report.opd_report", "write or compare run reports"),
}


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (recipes/*.yaml) or a run's config.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. run.num_steps=3")
    p.add_argument("--rehearse", action="store_true",
                   help="run.rehearse=true: the recipe shrunk to this machine, every stage (tiny models, toy sizes)")


def _overrides(args: argparse.Namespace) -> List[str]:
    return [*args.overrides, *(["run.rehearse=true"] if args.rehearse else [])]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _recipe_args(sub.add_parser("run", help="run a recipe"))
    v = sub.add_parser("validate", help="resolve and validate a recipe; print config and plan")
    _recipe_args(v)
    v.add_argument("--nodes", type=int, default=None, help="node count to plan for (default: cluster.num_nodes)")
    v.add_argument("--mfu", type=_fraction, default=DEFAULT_MFU,
                   help=f"model FLOPs utilisation of training and teacher scoring for the time estimate "
                        f"(default {DEFAULT_MFU})")
    v.add_argument("--sampling-mfu", type=_fraction, default=DEFAULT_SAMPLING_MFU,
                   help=f"MFU of sampling (decode, memory-bound) (default {DEFAULT_SAMPLING_MFU})")
    for name, (_, help_text) in DELEGATED.items():
        d = sub.add_parser(name, help=help_text, add_help=False)
        d.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _cmd_validate(args: argparse.Namespace) -> int:
    from opd_megatron.config import to_yaml
    from opd_megatron.run.fetch import check_reachable
    from opd_megatron.run.preflight import absent_models, load_and_validate
    from opd_megatron.plan.describe import describe_plan

    cfg, hf = load_and_validate(args.recipe, _overrides(args), absent_ok=True)
    print("# resolved config")
    print(to_yaml(cfg))
    print("# plan")
    for line in absent_models(cfg):
        print(line)
    unreachable = check_reachable(cfg)
    if unreachable:
        print(f"{unreachable} (`opd run` would refuse)")
    print(describe_plan(cfg, hf, num_nodes=args.nodes, mfu=args.mfu, sampling_mfu=args.sampling_mfu))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from opd_megatron.run.preflight import load_and_validate
    from opd_megatron.run.runner import run

    from opd_megatron.run import rehearse

    overrides = _overrides(args)
    cfg, _ = load_and_validate(args.recipe, overrides)
    if rehearse.is_driver(cfg):
        return rehearse.drive(cfg, args.recipe, overrides)
    return run(cfg, recipe=args.recipe, overrides=overrides)


def _dispatch(argv: List[str]) -> int:
    if argv and argv[0] in DELEGATED:  # their own parsers take every remaining argument
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(getattr(module, "cli_main")(argv[1:]) or 0)
    if argv and argv[0] in ("run", "validate") and "--rehearse" in argv[1:]:
        # a flag anywhere among the overrides (argparse takes it only before the positionals)
        argv = [argv[0], "--rehearse", *[a for a in argv[1:] if a != "--rehearse"]]
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _cmd_validate(args)
    return _cmd_run(args)


def main(argv: Optional[List[str]] = None) -> int:
    return cli_entry(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
