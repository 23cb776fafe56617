"""Rows of a prompt dataset: jsonl, parquet, a ``datasets.save_to_disk`` directory or
``datasets.load_dataset`` (a hub id or a local dataset directory), read into ``Prompt`` records.

Every row keeps where it came from (``train.jsonl:12``, ``data/x.parquet row 11``; rows are
numbered from 0 as ``dataset[i]`` numbers them, jsonl lines from 1 as editors do), so a bad row
is named in one line. Reading checks what every task needs (valid JSON objects, the prompt
field, text); what only some runs need (answers, references, their format) is checked by
``DatasetTask.check`` (opd_megatron.data.tasks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from opd_megatron.config.schema import DataConfig
from opd_megatron.data.prompts import Prompt
from opd_megatron.errors import ConfigError

DATASET_SOURCES = ("jsonl", "parquet", "disk", "hf")
"""data.source values read from a dataset (the others are generated from the seed)."""


@dataclass(frozen=True)
class Row:
    prompt: Prompt
    where: str
    """The file and line (jsonl) or the dataset and row number."""
    fields: Tuple[str, ...] = ()
    """Every field the row has (named when one is missing)."""


def is_local(data: DataConfig) -> bool:
    """The dataset is a local path (every source but a hub id under hf)."""
    return data.source != "hf" or (bool(data.path) and Path(str(data.path)).exists())


def check_path(data: DataConfig) -> None:
    """data.path is set and, for the file sources, exists (no rows are read)."""
    if not data.path:
        example = "zwhe99/DeepMath-103K or a local dataset directory" if data.source == "hf" else "a local path"
        raise ConfigError(f"data.path: missing; data.source={data.source} reads its rows from "
                          f"data.path ({example})")
    path = Path(str(data.path))
    if data.source == "hf" or path.exists():
        if data.source == "jsonl" and not path.is_file():
            raise ConfigError(f"data.path: {path} is a directory; data.source=jsonl reads one file")
        return
    what = {"jsonl": "prompt file", "parquet": "parquet file or directory",
            "disk": "save_to_disk directory"}[data.source]
    raise ConfigError(f"data.path: {what} not found: {data.path!r} (needed by data.source={data.source})")


def load_rows(data: DataConfig) -> List[Row]:
    """Every row of the dataset, in its order, as Prompt records (answer/reference None where
    the row has no such field)."""
    check_path(data)
    rows = list(_raw_rows(data))
    if not rows:
        raise ConfigError(f"data.path: {data.path} holds no rows")
    return [_row(data, fields, where, names) for fields, where, names in rows]


def _row(data: DataConfig, fields: Dict[str, Any], where: str, names: Tuple[str, ...]) -> Row:
    if fields.get(data.prompt_key) is None:
        raise ConfigError(f"data.prompt_key: '{data.prompt_key}' missing in {where}; "
                          f"the row has fields: {', '.join(names) or '(none)'}")
    text = fields[data.prompt_key]
    if not isinstance(text, str):
        raise ConfigError(f"data.prompt_key: '{data.prompt_key}' in {where} is a "
                          f"{type(text).__name__}, not text")

    def value(key: str) -> Optional[str]:
        v = fields.get(key)
        return None if v is None else str(v)

    return Row(Prompt(text, value(data.answer_key), value(data.reference_key)), where, names)


RawRow = Tuple[Dict[str, Any], str, Tuple[str, ...]]
"""(the fields read, where, every field name of the row)."""


def _raw_rows(data: DataConfig) -> Iterable[RawRow]:
    path = str(data.path)
    if data.source == "jsonl":
        return _jsonl_rows(Path(path))
    if data.source == "parquet":
        return _parquet_rows(path, data)
    return _datasets_rows(data)


def _jsonl_rows(path: Path) -> List[RawRow]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"data.path: {path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"data.path: {path}:{lineno}: a JSON {type(obj).__name__}, not an object "
                              f"with the prompt and answer fields")
        out.append((obj, f"{path}:{lineno}", tuple(obj)))
    return out


def _parquet_rows(path: str, data: DataConfig) -> List[RawRow]:
    import pyarrow.dataset as pads

    try:
        ds = pads.dataset(path, format="parquet")
        names = list(ds.schema.names)
        table = ds.to_table(columns=[k for k in _wanted(data) if k in names])
    except Exception as e:  # ArrowInvalid and kin: say which file, in one line
        raise ConfigError(f"data.path: {path} is not readable as parquet ({type(e).__name__}: "
                          f"{_first_line(e)})") from None
    return _columns_rows(path, names, table.to_pydict(), data)


def _datasets_rows(data: DataConfig) -> List[RawRow]:
    import datasets

    path = str(data.path)
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a bad row's error stays one line; the run's log stays ours
    try:
        if data.source == "disk":
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, split=data.split)
    except Exception as e:  # offline, gated, not a dataset, unknown split: one line
        hint = "" if data.source == "disk" else "; offline, use a local copy (a path, or data.source=jsonl|parquet|disk)"
        raise ConfigError(f"data.path: cannot load {path} (data.source={data.source}, split {data.split}): "
                          f"{type(e).__name__}: {_first_line(e)}{hint}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    if isinstance(ds, datasets.DatasetDict):
        if data.split not in ds:
            raise ConfigError(f"data.split: '{data.split}' is not a split of {path} (splits: {', '.join(ds)})")
        ds = ds[data.split]
    names = list(ds.column_names)
    columns = ds.select_columns([k for k in _wanted(data) if k in names]).to_dict()
    return _columns_rows(path, names, columns, data)


def _wanted(data: DataConfig) -> List[str]:
    return list(dict.fromkeys([data.prompt_key, data.answer_key, data.reference_key]))


def _columns_rows(path: str, names: List[str], columns: Dict[str, list],
                  data: DataConfig) -> List[RawRow]:
    """Rows of a columnar dataset; a missing prompt column is named with every column it has."""
    if data.prompt_key not in names:
        raise ConfigError(f"data.prompt_key: '{data.prompt_key}' missing in {path} row 0; "
                          f"the rows have fields: {', '.join(names)}")
    num = len(next(iter(columns.values()))) if columns else 0
    keys, all_names = list(columns), tuple(names)
    return [({k: columns[k][i] for k in keys}, f"{path} row {i}", all_names) for i in range(num)]


HELDOUT_SALT = "opd-heldout"
"""Mixed into the hash that orders prompts for the held-out split (fixed: the split never moves)."""


def heldout_key(text: str) -> bytes:
    """Where a prompt stands in the held-out order: a hash of its text alone."""
    return hashlib.sha256(f"{HELDOUT_SALT}\0{text}".encode("utf-8")).digest()


def heldout_split(rows: List[Row], num: int, name: str) -> Tuple[List[Row], List[Row]]:
    """(held-out rows, training rows). The held-out rows are the first ``num`` distinct prompts
    in hash order (one row each, in that order); training keeps every row whose prompt is not
    among them, in file order. The rule reads only the prompt text: no seed, no row order, and
    a prompt repeated in the file is on one side only."""
    if num == 0:
        return [], list(rows)
    first: Dict[str, Row] = {}
    for r in rows:
        first.setdefault(r.prompt.text, r)
    if num >= len(first):
        raise ConfigError(f"data.num_heldout: {num} would hold out all {len(first)} distinct prompts of "
                          f"{name}, leaving none to train on; set it below {len(first)} (e.g. "
                          f"{max(1, len(first) // 10)}) or to 0 (evaluate on eval.benchmarks only)")
    order = sorted(first, key=lambda t: (heldout_key(t), t))[:num]
    held = set(order)
    return [first[t] for t in order], [r for r in rows if r.prompt.text not in held]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


__all__ = ["DATASET_SOURCES", "Row", "check_path", "heldout_key", "heldout_split", "is_local", "load_rows"]
