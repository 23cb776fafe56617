"""The ``opd`` command line (also ``python -m opd_megatron``).

    opd run RECIPE [key=value ...]        run a recipe (writes runs/<name>/)
    opd validate RECIPE [key=value ...]   resolve + validate; print the config and the plan
    opd convert ...                       HF <-> Megatron checkpoints (opd convert -h)
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

# Subcommands owned by other modules: name -> (module, help).
DELEGATED = {
    "continual": ("opd_megatron.run.continual", "mid-train on new documents, then OPD from an earlier checkpoint; rounds"),
    "convert": ("opd_megatron.learner.convert", "HF <-> Megatron checkpoint conversion"),
    "eval": ("opd_megatron.evaluation.opd_eval", "evaluate a model (AIME/MATH500/GPQA/tiny task)"),
    "flops": ("opd_megatron.plan.flops", "FLOPs account for models and token counts"),
    "report": ("opd_megatron.report.opd_report", "write or compare run reports"),
}


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (recipes/*.yaml) or a run's config.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. run.num_steps=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _recipe_args(sub.add_parser("run", help="run a recipe"))
    v = sub.add_parser("validate", help="resolve and validate a recipe; print config and plan")
    _recipe_args(v)
    v.add_argument("--nodes", type=int, default=None, help="node count to plan for (default: cluster.num_nodes)")
    for name, (_, help_text) in DELEGATED.items():
        d = sub.add_parser(name, help=help_text, add_help=False)
        d.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _cmd_validate(args: argparse.Namespace) -> int:
    from opd_megatron.config import to_yaml
    from opd_megatron.run.preflight import load_and_validate
    from opd_megatron.plan.describe import describe_plan

    cfg, hf = load_and_validate(args.recipe, args.overrides)
    print("# resolved config")
    print(to_yaml(cfg))
    print("# plan")
    print(describe_plan(cfg, hf, num_nodes=args.nodes))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from opd_megatron.run.preflight import load_and_validate
    from opd_megatron.run.runner import run

    cfg, _ = load_and_validate(args.recipe, args.overrides)
    return run(cfg, recipe=args.recipe, overrides=list(args.overrides))


def _dispatch(argv: List[str]) -> int:
    if argv and argv[0] in DELEGATED:  # their own parsers take every remaining argument
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(getattr(module, "cli_main")(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _cmd_validate(args)
    return _cmd_run(args)


def main(argv: Optional[List[str]] = None) -> int:
    return cli_entry(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
