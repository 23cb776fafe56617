"""The Python side of slurm/opd.sbatch: plan, prepare models, start one server, health-wait.

Each subcommand is one step of the job; the sbatch script runs them (through srun where a
process belongs on a node). They read the same recipe + key=value overrides as ``opd run``
and the node list in ``--nodes`` (``scontrol show hostnames``), so every step computes the
same placement (opd_megatron.plan.placement) independently.

    python slurm/job.py exports --nodes "n1 n2" RECIPE [key=value ...]   # eval-able OPD_* vars
    python slurm/job.py prepare RECIPE [key=value ...]       # build missing (tiny) models
    python slurm/job.py serve student 0 --nodes "n1 n2" RECIPE [key=value ...]  # exec one SGLang server
                                                                  #   (--dry-run: print its command)
    python slurm/job.py router --nodes "n1 n2" RECIPE [key=value ...]           # exec sglang-router
    python slurm/job.py wait --timeout-s 300 --pids "12 13" URL ...  # until every /health is 200

Bad input exits 2 with one line naming the key (opd_megatron.errors.ConfigError), before any
process starts; a server that dies or stays unhealthy exits 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Optional, Sequence

from opd_megatron.config.layout import server_seed
from opd_megatron.config.schema import Config
from opd_megatron.engines.apikey import KEY_FILE_ENV, configured_key, is_loopback, keyed_command
from opd_megatron.errors import ConfigError, RuntimeFailure
from opd_megatron.plan.placement import Placement, plan, shell_exports
from opd_megatron.run.preflight import load_and_validate, resolve_config


def _placement(args: argparse.Namespace, cfg: Config) -> Placement:
    nodes = args.nodes.split()
    if not nodes:
        raise ConfigError("--nodes: empty node list (run inside a Slurm job or pass --nodes)")
    return plan(cfg, nodes)


def _job_key(cfg: Config, p: Placement) -> Optional[str]:
    """The job's API key (engines.api_key_env, or the file opd.sbatch made); servers bound beyond
    loopback are never started without one."""
    key = configured_key(cfg.engines)
    if key is None and not is_loopback(p.profile.bind_host):
        raise ConfigError(f"engines.api_key_env: servers would listen on {p.profile.bind_host} with no API key; "
                          f"run them through slurm/opd.sbatch (it makes one per job, ${KEY_FILE_ENV}) or "
                          f"set engines.api_key_env")
    return key


def _ignore_preemption_signal() -> None:
    """Servers outlive SIGUSR1 (SGLang installs no handler; the default would kill it): a
    ``--signal=USR1@N`` without ``B:`` or a ``scancel -s USR1`` reaches every step, and only
    the learner should act on it. An ignored signal stays ignored across exec."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def cmd_exports(args: argparse.Namespace) -> int:
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # stdout is eval'd by opd.sbatch: only the exports
        cfg, _ = load_and_validate(args.recipe, args.overrides)
    p = _placement(args, cfg)
    from opd_megatron.run.rundir import check_run_dir, run_dir_of

    check_run_dir(cfg)  # a run directory holding other settings fails now, not after servers start
    out = shell_exports(p)
    extra = {"OPD_RUN_DIR": os.path.abspath(run_dir_of(cfg)), "OPD_SIGNAL_S": cfg.cluster.signal_s,
             "OPD_STARTUP_TIMEOUT_S": int(cfg.engines.startup_timeout_s), "OPD_GPUS_PER_NODE": cfg.cluster.gpus_per_node}
    out += "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in extra.items())
    sys.stdout.write(out)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Build model.path from model.prepare where missing: the servers need it before ``opd run``."""
    from opd_megatron.run.prepare import ensure_model
    from opd_megatron.run.runner import run_prepare_recipe

    cfg, _ = load_and_validate(args.recipe, args.overrides)
    for role in ("teacher", "student"):
        model = getattr(cfg, role)
        if model.path:
            built = ensure_model(model, role, run_prepare_recipe)
            print(f"[job] {role}: {'built' if built else 'ready'} {model.path}", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Exec one SGLang server with the engines launcher's command line (same flags as `opd run`)."""
    from opd_megatron.engines import launcher

    cfg = resolve_config(args.recipe, args.overrides, announce=False)  # as `opd run` resolves it
    p = _placement(args, cfg)
    servers = {"student": p.student, "teacher": p.teacher}[args.role]
    if args.index >= len(servers):
        raise ConfigError(f"engines.{args.role}.num_servers: no server {args.index} in this plan ({len(servers)})")
    server = servers[args.index]
    model, role_cfg = getattr(cfg, args.role), getattr(cfg.engines, args.role)
    launcher.validate_role(args.role, model, role_cfg)
    device = launcher.resolve_device(cfg.engines)
    if device == "cpu":
        launcher.check_cpu_stack()
    else:
        launcher.check_gpu_stack()
    seed = server_seed(cfg.run.seed, args.role, args.index)  # as opd_megatron.engines.launcher seeds it
    env = launcher.server_env(device)
    cmd = keyed_command(launcher.build_server_command(model, role_cfg, host=p.profile.bind_host, port=server.port,
                                                      device=device, seed=seed), env, _job_key(cfg, p))
    if server.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, server.gpus))
    print(f"[job] {args.role} server {args.index} on {server.node}: $ {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    _ignore_preemption_signal()
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def cmd_router(args: argparse.Namespace) -> int:
    from opd_megatron.engines.launcher import build_router_command

    cfg = resolve_config(args.recipe, args.overrides, announce=False)  # as `opd run` resolves it
    p = _placement(args, cfg)
    if p.router is None:
        raise ConfigError("engines.router: this plan has no router (needs engines.router=true and >1 student server)")
    env = dict(os.environ)
    cmd = keyed_command(build_router_command([s.url for s in p.student], host=p.profile.bind_host,
                                             port=p.router.port), env, _job_key(cfg, p))
    print(f"[job] router on {p.router.node}: $ {shlex.join(cmd)}", flush=True)
    _ignore_preemption_signal()
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cmd_wait(args: argparse.Namespace) -> int:
    """Poll every URL's /health; fail fast when one of the server sruns (--pids) has exited."""
    pids = [int(x) for x in args.pids.split()]
    pending = list(args.urls)
    deadline = time.monotonic() + args.timeout_s
    while pending:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                raise RuntimeFailure(f"server srun pid {pid} exited before {' '.join(pending)} became healthy; "
                                     f"see the slurm-*.log files in the run's logs/") from None
        pending = [u for u in pending if not _healthy(u)]
        if pending and time.monotonic() > deadline:
            raise RuntimeFailure(f"not healthy after {args.timeout_s:g} s (engines.startup_timeout_s): {' '.join(pending)}")
        if pending:
            time.sleep(1.0)
    print(f"[job] healthy: {' '.join(args.urls)}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slurm/job.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_cmd(name: str, nodes: bool) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        if nodes:
            p.add_argument("--nodes", default=os.environ.get("OPD_NODES", ""), help="space-separated node names")
        p.add_argument("recipe")
        p.add_argument("overrides", nargs="*")
        return p

    recipe_cmd("exports", True)
    recipe_cmd("prepare", False)
    recipe_cmd("router", True)
    serve = sub.add_parser("serve")
    serve.add_argument("role", choices=("student", "teacher"))
    serve.add_argument("index", type=int)
    serve.add_argument("--nodes", default=os.environ.get("OPD_NODES", ""))
    serve.add_argument("--dry-run", action="store_true", help="print the server command, do not start it")
    serve.add_argument("recipe")
    serve.add_argument("overrides", nargs="*")
    wait = sub.add_parser("wait")
    wait.add_argument("--timeout-s", type=float, default=300.0)
    wait.add_argument("--pids", default="")
    wait.add_argument("urls", nargs="+")
    return parser


COMMANDS = {"exports": cmd_exports, "prepare": cmd_prepare, "serve": cmd_serve, "router": cmd_router,
            "wait": cmd_wait}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"opd: error: {e}", file=sys.stderr)
        return 2
    except RuntimeFailure as e:
        print(f"opd: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
