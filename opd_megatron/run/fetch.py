"""``opd fetch RECIPE``: the hub datasets, benchmarks and (``--models``) models a recipe names,
into a cache that runs then read with the hub offline.

A cluster's compute nodes often have no internet. On a login node that has it::

    opd fetch recipes/opd-qwen3-8b-to-8b-base-3n8g.yaml [--models] [key=value ...]

fills the cache (``run.hub_cache``; default ``$OPD_HUB_CACHE``, else
``~/.cache/opd-megatron/hub``; it must be on a filesystem the compute nodes share)::

    datasets/<repo id>/<config>/<split>.parquet   the rows (+ ``.json``: where from, when, rows, sha256)
    models/<repo id>/                             a snapshot (config.json, safetensors, tokenizer)

Every run resolves its hub names against the cache before any check reads a file
(``cache_changes``, applied in ``load_and_validate``): a hub dataset (``data.source=hf``,
``data.path`` a repo id) becomes the cached parquet, a benchmark without a file gets the cached
one as ``eval.benchmark_files.<name>``, a model whose ``path`` is not here but whose ``hub_id``
is cached reads the snapshot. The run prints each replacement (``[cache] key: old -> new``),
and the resolved config.yaml records it. What is still a hub name after that must be
reachable: ``check_reachable`` refuses the run in one line, before any process starts, when
the hub cannot be reached (``HF_HUB_OFFLINE=1``, or no answer from ``HF_ENDPOINT``).

Where ``opd fetch`` downloads from (``Hub``): the hub itself (``datasets.load_dataset``,
``huggingface_hub.snapshot_download``; ``HF_ENDPOINT`` and ``HF_TOKEN`` as usual), or
``--mirror DIR``, a directory of hub repo clones (``DIR/<repo id>/``, e.g. a shared
``git clone https://huggingface.co/datasets/<id>``), read with the same ``load_dataset``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from opd_megatron.config.schema import Config
from opd_megatron.errors import EXIT_OK, ConfigError, RuntimeFailure, cli_entry
from opd_megatron.methods import needs_teacher_model

CACHE_ENV = "OPD_HUB_CACHE"
DEFAULT_CACHE = Path("~/.cache/opd-megatron/hub")
REACH_TIMEOUT_S = 5.0
"""Seconds the hub endpoint has to answer before a run calls it unreachable."""
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Need:
    """One thing a recipe reads from the hub."""

    key: str
    """The recipe key that names it (data.path, eval.benchmarks.aime24, teacher.hub_id)."""
    kind: str  # "dataset" | "model"
    repo: str
    config: Optional[str] = None
    split: str = "train"

    def entry(self, cache: Path) -> Path:
        """Where the cache holds it (a parquet file, or a model directory)."""
        if self.kind == "model":
            return cache / "models" / self.repo
        return cache / "datasets" / self.repo / (self.config or "default") / f"{self.split}.parquet"

    def describe(self) -> str:
        what = f"{self.repo} ({self.config}, split {self.split})" if self.config else (
            self.repo if self.kind == "model" else f"{self.repo} (split {self.split})")
        return f"{self.key}: {what}"


def _roles(cfg: Config) -> Tuple[str, ...]:
    try:
        return ("student", "teacher") if needs_teacher_model(cfg) else ("student",)
    except (KeyError, ValueError):  # an unknown method: validation names it; both roles meanwhile
        return ("student", "teacher")


def cache_dir(cfg: Config) -> Path:
    raw = cfg.run.hub_cache or os.environ.get(CACHE_ENV) or str(DEFAULT_CACHE)
    return Path(raw).expanduser()


def needs(cfg: Config, models: bool = True) -> List[Need]:
    """Every hub name the recipe reads: its hub dataset, the benchmarks without a local file,
    and (``models``) each model whose ``path`` is not here and that names a ``hub_id``."""
    from opd_megatron.data.dataset import is_local
    from opd_megatron.evaluation.benchmarks import HF_SOURCES

    out: List[Need] = []
    d = cfg.data
    if d.source == "hf" and d.path and not is_local(d):
        out.append(Need("data.path", "dataset", str(d.path), None, d.split))
    for name in cfg.eval.benchmarks:
        if name in HF_SOURCES and name not in cfg.eval.benchmark_files:
            src = HF_SOURCES[name]
            out.append(Need(f"eval.benchmarks.{name}", "dataset", src.dataset, src.config, src.split))
    if models:
        for role in _roles(cfg):
            m = getattr(cfg, role)
            if m.hub_id and not m.prepare and not Path(m.path).exists():
                out.append(Need(f"{role}.hub_id", "model", m.hub_id))
    return out


def models_without_hub_id(cfg: Config) -> List[str]:
    """One line per model that is not here and that ``--models`` cannot fetch (no hub_id)."""
    return [f"{role}.path {m.path} is not here and names no {role}.hub_id: not fetched; put it there"
            for role in _roles(cfg) for m in [getattr(cfg, role)]
            if not m.hub_id and not m.prepare and m.path and not Path(m.path).exists()]


def _cached(need: Need, cache: Path) -> bool:
    entry = need.entry(cache)
    return (entry / "config.json").is_file() if need.kind == "model" else entry.is_file()


def cache_changes(cfg: Config) -> List[Tuple[str, Any, Any]]:
    """The recipe's hub names that the cache holds, as (key, old, new) overrides."""
    cache = cache_dir(cfg)
    out: List[Tuple[str, Any, Any]] = []
    files = dict(cfg.eval.benchmark_files)
    for need in needs(cfg):
        if not _cached(need, cache):
            continue
        entry = str(need.entry(cache))
        if need.key == "data.path":
            out += [("data.source", "hf", "parquet"), ("data.path", cfg.data.path, entry)]
        elif need.kind == "model":
            role = need.key.split(".")[0]
            out.append((f"{role}.path", getattr(cfg, role).path, entry))
        else:
            files[need.key.rsplit(".", 1)[1]] = entry
    if files != cfg.eval.benchmark_files:
        out.append(("eval.benchmark_files", dict(cfg.eval.benchmark_files), files))
    return out


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def unreachable_reason() -> Optional[str]:
    """Why the hub cannot be reached from here (None: it answered)."""
    for var in OFFLINE_ENV:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    url = hub_endpoint()
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{url}: {reason}"
    return None


def check_reachable(cfg: Config) -> Optional[str]:
    """One line saying what the run needs that is neither cached nor reachable; None when
    everything is cached, local or the hub answers."""
    missing = needs(cfg, models=False)  # a model not here is refused by its own check
    if not missing:
        return None
    reason = unreachable_reason()
    if reason is None:
        return None
    first = missing[0]
    more = f" (and {len(missing) - 1} more: {', '.join(n.key for n in missing[1:])})" if len(missing) > 1 else ""
    return (f"{first.describe()} is not in the hub cache {cache_dir(cfg)} and the hub is unreachable "
            f"({reason}){more}; run `opd fetch RECIPE` where there is internet (same run.hub_cache), or "
            f"give a local copy")


# --- downloading -------------------------------------------------------------------------


class Hub(Protocol):
    """Where ``opd fetch`` downloads from."""

    where: str

    def dataset(self, need: Need) -> Any:
        """The split as a ``datasets.Dataset``."""

    def model(self, need: Need, dst: Path) -> None:
        """The repo's files into ``dst`` (a new directory)."""


class OnlineHub:
    """The hub itself (``HF_ENDPOINT``, default huggingface.co)."""

    def __init__(self) -> None:
        self.where = hub_endpoint()

    def dataset(self, need: Need) -> Any:
        import datasets

        return datasets.load_dataset(need.repo, need.config, split=need.split)

    def model(self, need: Need, dst: Path) -> None:
        from huggingface_hub import snapshot_download

        snapshot_download(need.repo, local_dir=str(dst))


class MirrorHub:
    """A directory of hub repo clones: ``ROOT/<repo id>/`` holds what the hub repo holds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _repo(self, need: Need) -> Path:
        path = self.root / need.repo
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory")
        return path

    def dataset(self, need: Need) -> Any:
        import datasets

        return datasets.load_dataset(str(self._repo(need)), need.config, split=need.split)

    def model(self, need: Need, dst: Path) -> None:
        shutil.copytree(self._repo(need), dst, ignore=shutil.ignore_patterns(".git"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_dataset(hub: Hub, need: Need, entry: Path) -> str:
    ds = hub.dataset(need)
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".part", dir=entry.parent)
    os.close(fd)
    try:
        ds.to_parquet(tmp)
        meta = {"repo": need.repo, "config": need.config, "split": need.split, "rows": len(ds),
                "columns": list(ds.column_names), "source": hub.where,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sha256": _sha256(Path(tmp))}
        _write_text(entry.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, entry)  # the parquet last: a cache entry is whole or absent
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return f"{len(ds):,} rows, columns {', '.join(ds.column_names)}"


def _fetch_model(hub: Hub, need: Need, entry: Path) -> str:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".part", dir=entry.parent))
    try:
        shutil.rmtree(tmp)  # our own empty directory; the hub writes a fresh one
        hub.model(need, tmp)
        if not (tmp / "config.json").is_file():
            raise FileNotFoundError(f"{need.repo} has no config.json (not an HF model repo)")
        os.replace(tmp, entry)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp)  # the partial download we created
        raise
    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
    return f"{size / 2**30:.2f} GiB"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def fetch(cfg: Config, hub: Hub, models: bool = False) -> List[str]:
    """Download what the recipe needs that the cache lacks; one line per need."""
    import datasets

    cache = cache_dir(cfg)
    todo = needs(cfg, models=models)
    lines = []
    datasets.disable_progress_bars()  # one line per item, and failures in one line
    for need in todo:
        entry = need.entry(cache)
        if _cached(need, cache):
            lines.append(f"cached   {need.describe()} -> {entry}")
            continue
        t0 = time.perf_counter()
        try:
            what = (_fetch_model if need.kind == "model" else _fetch_dataset)(hub, need, entry)
        except Exception as e:  # offline, gated, renamed, not a dataset: one line naming the key
            first = str(e).strip().splitlines()[0][:240] if str(e).strip() else ""
            raise RuntimeFailure(f"{need.describe()}: cannot fetch from {hub.where}: {type(e).__name__}: {first}"
                                 f" (nothing of it was written to {cache})") from None
        lines.append(f"fetched  {need.describe()} -> {entry} ({what}, {time.perf_counter() - t0:.1f} s)")
        print(lines[-1], flush=True)
    return lines


def cli_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="opd fetch", description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides (run.hub_cache=DIR: the cache)")
    p.add_argument("--models", action="store_true", help="also the models that name a hub_id and are not here")
    p.add_argument("--mirror", default=None, help="a directory of hub repo clones to fetch from instead of the hub")
    args = p.parse_intermixed_args(list(argv))  # options before, among or after the overrides
    from opd_megatron.config import load_config, validate
    from opd_megatron.evaluation.benchmarks import check_eval_benchmarks

    cfg = load_config(args.recipe, args.overrides)
    validate(cfg)
    check_eval_benchmarks(cfg.eval.benchmarks, cfg.eval.benchmark_files)
    hub: Hub
    if args.mirror:
        root = Path(args.mirror).expanduser()
        if not root.is_dir():
            raise ConfigError(f"--mirror: {root} is not a directory (a directory of hub repo clones)")
        hub = MirrorHub(root)
    else:
        hub = OnlineHub()
    todo = needs(cfg, models=args.models)
    cache = cache_dir(cfg)
    if not todo:
        print(f"opd fetch: {args.recipe} names nothing on the hub that is not here; nothing to fetch")
        return EXIT_OK
    print(f"opd fetch: {len(todo)} item(s) from {hub.where} into {cache}", flush=True)
    for line in fetch(cfg, hub, models=args.models):
        if line.startswith("cached"):
            print(line)
    if args.models:
        for line in models_without_hub_id(cfg):
            print(f"opd fetch: {line}")
    print(f"opd fetch: done; runs with run.hub_cache={cache} (or {CACHE_ENV}) read these with the hub offline")
    return EXIT_OK


def main() -> int:
    import sys

    return cli_entry(cli_main, sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
