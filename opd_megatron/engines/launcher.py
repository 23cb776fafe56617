"""Start, health-check and stop the SGLang servers of a run (and sglang-router in front).

Each server is its own process group (``start_new_session``), logs to
``{log_dir}/{role}-{i}.log`` and is stopped by its PID's group: SIGTERM, then SIGKILL after a
grace period, never by process name. Several student servers go behind ``sglang-router`` for
data-parallel rollouts; weight updates bypass the router (it does not forward them) and go to
``EngineGroup.server_urls``. When a role has ``urls`` set, nothing is launched.

CPU mode (no GPU, tests and the toy recipe) adds what these machines need, measured in
/work/shared/notes/cpu-stack.md: ``--device cpu``, ``SGLANG_USE_CPU_ENGINE=1`` (else rotary
embedding imports vllm), ``--max-total-tokens`` (the default KV cache takes ~15 GB RAM),
``--sleep-on-idle`` (else the idle scheduler spins a core) and an explicit ``--dtype`` (``auto``
serves an fp32 checkpoint in float16 on CPU). It also needs the two CPU shims in shims/.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from opd_megatron.config.layout import role_ports, role_seed, server_ports
from opd_megatron.config.schema import EngineRoleConfig, EnginesConfig, ModelConfig
from opd_megatron.engines.apikey import keyed_command, run_key
from opd_megatron.engines.http import EngineUnavailable, health_ok
from opd_megatron.errors import ConfigError


@dataclass
class ServerProcess:
    """One process we started (an SGLang server or the router)."""

    name: str
    url: str
    log_path: Path
    process: subprocess.Popen
    cmd: List[str] = field(default_factory=list)
    """The argv it was started with (a restart reuses it)."""
    env: Dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL the process group (server + its scheduler/detokenizer). A server of ours holds
        nothing to save, and SGLang's graceful SIGTERM costs 5 s a server (a drain, then a wait
        "to let GPU activity settle"); both leave the same few /dev/shm files behind."""
        if not self.alive():  # reaped: its group id may be another's now
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30.0)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class EngineGroup:
    """The servers of one role. ``url`` is where requests go; ``server_urls`` each server."""

    role: str
    server_urls: List[str]
    url: str
    processes: List[ServerProcess] = field(default_factory=list)

    @property
    def request_urls(self) -> List[str]:
        """URLs for generate/score: the router if there is one, else every server."""
        return [self.url] if self.url not in self.server_urls else list(self.server_urls)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def restart_failed(self, *, timeout_s: float, check_health: bool) -> List[str]:
        """Start again every server of ours that exited (or, with ``check_health``, that does
        not answer ``/health``), on the same port with the same command; wait until healthy.
        Returns their URLs. A group given by ``urls`` has no processes: nothing to restart."""
        restarted = []
        for i, proc in enumerate(self.processes):
            if proc.alive() and not (check_health and not health_ok(proc.url, timeout_s=10.0)):
                continue
            proc.stop()
            _wait_port_free(proc.url, timeout_s=30.0)
            new = start_process(proc.name, proc.cmd, proc.url, proc.log_path.parent, proc.env)
            self.processes[i] = new
            wait_healthy(new, timeout_s=timeout_s)
            restarted.append(proc.url)
        return restarted


def resolve_device(engines: EnginesConfig) -> str:
    if engines.device != "auto":
        return engines.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_server_command(model: ModelConfig, role: EngineRoleConfig, *, host: str, port: int,
                         device: str, seed: int) -> List[str]:
    """The ``python -m sglang.launch_server`` argv for one server of a role (no API key: that
    goes through the environment, opd_megatron/engines/apikey.py)."""
    cmd = [sys.executable, "-m", "sglang.launch_server",
           "--model-path", model.path, "--tokenizer-path", model.tokenizer or model.path,
           "--host", host, "--port", str(port), "--tp-size", str(role.tp),
           "--dtype", role.dtype, "--max-total-tokens", str(role.max_total_tokens),
           "--random-seed", str(seed)]
    if device == "cpu":
        cmd += ["--device", "cpu", "--sleep-on-idle"]
    else:
        cmd += ["--mem-fraction-static", str(role.mem_fraction)]
    return cmd + list(role.extra_args)


# Set by torchrun for the learner's ranks; a server that inherits them joins the learner's
# rendezvous in its own torch.distributed init and never starts.
LAUNCHER_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT")


def server_env(device: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_DIST_VARS and not k.startswith("TORCHELASTIC_")}
    if device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        env["OPD_SGLANG_SEEDED_SAMPLING"] = "1"  # shims/sgl_kernel: per-request seeds on CPU
    return env


def build_router_command(worker_urls: List[str], *, host: str, port: int) -> List[str]:
    return [sys.executable, "-m", "sglang_router.launch_router", "--host", host,
            "--port", str(port), "--policy", "round_robin", "--worker-urls", *worker_urls]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"engines.base_port: port {port} on {host} is in use ({exc}); "
                              "pick another engines.base_port") from exc


def validate_role(name: str, model: ModelConfig, role: EngineRoleConfig) -> None:
    """Fail before any process starts on a path that cannot be served."""
    if role.urls:
        return
    if not model.path or not (Path(model.path) / "config.json").is_file():
        raise ConfigError(f"{name}.path: '{model.path}' is not an HF model directory "
                          "(no config.json); set it or build the model first")
    if role.num_servers < 1:
        raise ConfigError(f"engines.{name}.num_servers must be >= 1, got {role.num_servers}")


def check_cpu_stack() -> None:
    """SGLang on CPU imports two packages PyPI has no CPU build of: fail before launching."""
    import importlib.util

    needs = (("sgl_kernel", "shims/sgl_kernel"),
             ("torchvision", "torchvision==0.28.0 --no-deps + shims/torchvision_cpu_ops"))
    for module, what in needs:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"engines.device=cpu: SGLang needs '{module}' here ({what}; see "
                              "shims/README.md); run scripts/setup_env.sh")


def check_gpu_stack() -> None:
    """The CPU shims shadow real packages; on a GPU machine they must not be installed."""
    import importlib.metadata

    for dist in ("sgl-kernel-cpu-shim", "opd-torchvision-cpu-ops"):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        raise ConfigError(f"engines.device=cuda but the CPU-only shim '{dist}' is installed; "
                          f"pip uninstall {dist} and install the real sglang-kernel/torchvision")


def _wait_port_free(url: str, timeout_s: float) -> None:
    """A killed server's port can take a moment to close."""
    host, port = url.rsplit("//", 1)[-1].rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check_port_free(host, int(port))
        except ConfigError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_healthy(proc: ServerProcess, *, timeout_s: float, poll_s: float = 1.0) -> None:
    """Block until ``GET /health`` answers 200; fail fast if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            tail = _log_tail(proc.log_path)
            raise EngineUnavailable(f"{proc.name} ({proc.url}, pid {proc.pid}) exited with code "
                                    f"{proc.process.returncode} during startup; log "
                                    f"{proc.log_path}:\n{tail}")
        if health_ok(proc.url, timeout_s=2.0):
            return
        time.sleep(poll_s)
    proc.stop()
    raise EngineUnavailable(f"{proc.name} ({proc.url}) not healthy after {timeout_s:g} s "
                            f"(engines.startup_timeout_s); log {proc.log_path}")


def _log_tail(path: Path, num_lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


def start_process(name: str, cmd: List[str], url: str, log_dir: Path,
                  env: Dict[str, str]) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(("$ " + shlex.join(cmd) + "\n").encode())
        log.flush()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return ServerProcess(name=name, url=url, log_path=log_path, process=process, cmd=list(cmd),
                         env=dict(env))


def launch_role(name: str, model: ModelConfig, role: EngineRoleConfig, engines: EnginesConfig,
                log_dir: str | Path, *, first_port: int, seed: int = 0,
                use_router: bool = False) -> EngineGroup:
    """Start ``role.num_servers`` servers (and a router when asked); wait until healthy."""
    if role.urls:
        urls = [u.rstrip("/") for u in role.urls]
        return EngineGroup(role=name, server_urls=urls, url=urls[0])
    validate_role(name, model, role)
    device = resolve_device(engines)
    if device == "cpu":
        check_cpu_stack()
    else:
        check_gpu_stack()
    key = run_key(engines)
    servers, router_port = role_ports(first_port, role.num_servers, use_router)
    ports = servers + ([router_port] if router_port is not None else [])  # the router last
    for port in ports:
        check_port_free(engines.host, port)
    group = EngineGroup(role=name, server_urls=[], url="")
    try:
        for i, port in enumerate(ports[:role.num_servers]):
            url = f"http://{engines.host}:{port}"
            env = server_env(device)
            cmd = keyed_command(build_server_command(model, role, host=engines.host, port=port,
                                                     device=device, seed=seed + i), env, key)
            group.processes.append(start_process(f"{name}-{i}", cmd, url, Path(log_dir), env))
            group.server_urls.append(url)
        for proc in group.processes:
            wait_healthy(proc, timeout_s=engines.startup_timeout_s)
        group.url = group.server_urls[0]
        if use_router and role.num_servers > 1:
            router_url = f"http://{engines.host}:{ports[-1]}"
            env = dict(os.environ)
            cmd = keyed_command(build_router_command(group.server_urls, host=engines.host, port=ports[-1]),
                                env, key)  # the router's key is the one it sends to the servers
            router = start_process(f"{name}-router", cmd, router_url, Path(log_dir), env)
            group.processes.append(router)
            wait_healthy(router, timeout_s=engines.startup_timeout_s)
            group.url = router_url
    except BaseException:
        group.stop()
        raise
    return group


def launch_engines(student: ModelConfig, teacher: Optional[ModelConfig], engines: EnginesConfig,
                   log_dir: str | Path, *, seed: int = 0) -> Dict[str, EngineGroup]:
    """Student servers (ports from ``engines.base_port``), then teacher servers after them.

    ``teacher=None`` (e.g. objective.teacher_backend=megatron or sft) starts no teacher.
    """
    validate_role("student", student, engines.student)
    if teacher is not None:
        validate_role("teacher", teacher, engines.teacher)
    groups: Dict[str, EngineGroup] = {}
    ports = server_ports(engines)  # opd_megatron.config.layout: the Slurm placement's too
    try:
        groups["student"] = launch_role("student", student, engines.student, engines, log_dir,
                                        first_port=ports.student[0], seed=role_seed(seed, "student"),
                                        use_router=engines.router)
        if teacher is not None:
            groups["teacher"] = launch_role("teacher", teacher, engines.teacher, engines,
                                            log_dir, first_port=ports.teacher[0],
                                            seed=role_seed(seed, "teacher"))
    except BaseException:
        for group in groups.values():
            group.stop()
        raise
    return groups
