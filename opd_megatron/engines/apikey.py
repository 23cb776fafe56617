"""The servers' API key: where it comes from, and how a server gets it without a command line.

A server that listens beyond loopback always has a key; whoever can reach its port without it
could otherwise call ``/update_weights_from_tensor`` (its payload is unpickled: code execution as
the job's user) or swap the weights under a run. Where the key comes from, first match:

1. ``engines.api_key_env``: the environment variable holding a key you manage (servers you
   started yourself); unset or empty is an error before anything starts.
2. ``$OPD_API_KEY_FILE``: a file readable by its owner only; a Slurm job makes one per job in
   its run directory (slurm/opd.sbatch) and every step of the job reads it.
3. A run that launches its own servers on a non-loopback ``engines.host`` makes one for itself
   (random, in memory: its servers die with it).

The key never goes on a command line (``ps`` shows those to every user of a node), into a log,
``config.yaml``, the report or ``environment.json``: a server is started as
``python -m opd_megatron.engines.apikey MODULE ARGS...`` with the key in its environment, and
this module moves it into the server's own argument list inside the process.
"""

from __future__ import annotations

import ipaddress
import os
import runpy
import secrets
import socket
import stat
import sys
from pathlib import Path
from typing import Dict, List, Optional

from opd_megatron.errors import ConfigError

KEY_FILE_ENV = "OPD_API_KEY_FILE"
"""Path of the key file (the Slurm job's ``<run dir>/api-key``)."""
SERVER_KEY_ENV = "OPD_SERVER_API_KEY"
"""How a launched server receives its key (removed from its environment before it runs)."""

_own_key: Optional[str] = None


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address) resolves to loopback only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


_file_keys: Dict[str, str] = {}


def read_key_file(path: str | Path) -> str:
    """The key in ``path`` (owner-only), read once per process: the validation before a run
    reads it, so a run directory replaced by ``run.overwrite`` cannot take it away."""
    if str(path) in _file_keys:
        return _file_keys[str(path)]
    p = Path(path)
    try:
        mode = p.stat().st_mode
        key = p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"${KEY_FILE_ENV}: cannot read the API key file {p} ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"${KEY_FILE_ENV}: {p} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                          f"chmod 600 it")
    if not key:
        raise ConfigError(f"${KEY_FILE_ENV}: {p} is empty; it must hold the key")
    _file_keys[str(path)] = key
    return key


def configured_key(engines) -> Optional[str]:
    """The key from ``engines.api_key_env`` or ``$OPD_API_KEY_FILE`` (None: neither is set).
    A source that is set but gives no key is a one-line error."""
    if engines.api_key_env:
        if not os.environ.get(engines.api_key_env):
            raise ConfigError(f"engines.api_key_env: ${engines.api_key_env} is unset or empty; export the "
                              f"servers' key in it, or remove engines.api_key_env")
        return os.environ[engines.api_key_env]
    if os.environ.get(KEY_FILE_ENV):
        return read_key_file(os.environ[KEY_FILE_ENV])
    return None


def check_key_source(engines) -> None:
    """Fail in one line, before anything starts, when the configured key source gives no key."""
    configured_key(engines)


def check_router(engines, host: str, where: str) -> None:
    """sglang-router 0.3.2 takes ``--api-key`` only as the key it sends to the servers and asks
    its own callers for none: a router of ours never listens beyond loopback. ``where`` says
    what binds to ``host``."""
    if engines.router and engines.student.num_servers > 1 and not engines.student.urls and not is_loopback(host):
        raise ConfigError(f"engines.router: {where} {host}, and sglang-router checks no API key from its callers; "
                          f"set engines.router=false (the learner spreads its requests over the student "
                          f"servers itself)")


def run_key(engines) -> Optional[str]:
    """The key this process's servers and clients use: the configured one, else (servers bound
    beyond loopback) one made for this run, else None."""
    global _own_key
    key = configured_key(engines)
    if key is None and not is_loopback(engines.host):
        if _own_key is None:
            _own_key = secrets.token_urlsafe(32)
        key = _own_key
    return key


def keyed_command(cmd: List[str], env: Dict[str, str], key: Optional[str]) -> List[str]:
    """``cmd`` (``python -m MODULE ARGS``) started through this module with ``key`` put in
    ``env``; unchanged without a key."""
    if not key:
        return cmd
    if cmd[1:2] != ["-m"]:
        raise ValueError(f"not a `python -m MODULE` command: {cmd[:3]}")
    env[SERVER_KEY_ENV] = key
    return [cmd[0], "-m", __name__, *cmd[2:]]


def _redact_output(key: str) -> None:
    """Route this process's stdout and stderr (and its children's, which inherit them) through a
    forked redactor that writes them on with the key replaced: SGLang logs its resolved
    arguments, the key among them."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(w)
        secret, buf = key.encode(), b""
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            buf += chunk
            lines = buf.split(b"\n")
            buf = lines.pop()
            if len(buf) > 1 << 20:  # a very long unterminated line: pass it on
                lines.append(buf)
                buf = b""
            if lines:
                os.write(1, b"".join(line.replace(secret, b"***") + b"\n" for line in lines))
        if buf:
            os.write(1, buf.replace(secret, b"***"))
        os._exit(0)
    os.close(r)
    os.dup2(w, 1)
    os.dup2(w, 2)
    os.close(w)


def main() -> None:
    """``python -m opd_megatron.engines.apikey MODULE ARGS...``: run MODULE as ``__main__`` with
    ``--api-key`` from ``$OPD_SERVER_API_KEY`` appended to its arguments in this process, its
    output redacted."""
    key = os.environ.pop(SERVER_KEY_ENV, "")
    if len(sys.argv) < 2 or not key:
        print(f"usage: {SERVER_KEY_ENV}=KEY python -m {__name__} MODULE [ARGS ...]", file=sys.stderr)
        raise SystemExit(2)
    module = sys.argv[1]
    sys.stdout.flush()
    sys.stderr.flush()
    _redact_output(key)
    sys.argv = [module, *sys.argv[2:], "--api-key", key]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
