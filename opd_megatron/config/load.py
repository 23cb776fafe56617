"""Load a recipe: schema defaults <- base recipe <- recipe <- ``key=value`` overrides.

Every key is checked against the schema before merging, so a misspelled key fails with its
dotted path and the closest valid name, and a wrong type fails with the key and the expected
type. Nothing here starts a process or writes a file.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from opd_megatron.config.schema import Config
from opd_megatron.errors import ConfigError

BASE_KEY = "base"


def _fields(cls: Type) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _nested_type(f: dataclasses.Field) -> Optional[Type]:
    """The dataclass type of a nested section field, else None."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return type(value)
    return None


def check_keys(data: Any, cls: Type = Config, prefix: str = "", source: str = "") -> None:
    """Raise ConfigError for the first key of ``data`` that the schema does not have."""
    if not isinstance(data, dict):
        where = prefix or "top level"
        raise ConfigError(f"{source}: {where} must be a mapping of keys, got {type(data).__name__}")
    fields = _fields(cls)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else (
                f"; valid keys here: {', '.join(sorted(fields))}")
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
        sub = _nested_type(fields[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; give it a mapping of keys, "
                                  f"not {value!r}")
            check_keys(value, sub, dotted + ".", source)


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path} (give a path to a YAML file in recipes/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a YAML recipe") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def read_recipe_layers(recipe: str | Path) -> List[Tuple[str, Dict[str, Any]]]:
    """[(source, data)] from the base recipe (if any) to the recipe itself."""
    path = Path(recipe)
    data = _read_yaml(path)
    layers: List[Tuple[str, Dict[str, Any]]] = []
    base = data.pop(BASE_KEY, None)
    if base is not None:
        base_path = (path.parent / str(base)).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base recipe not found: {base} (relative to {path.parent})")
        base_data = _read_yaml(base_path)
        if BASE_KEY in base_data:
            raise ConfigError(f"{base_path}: a base recipe cannot itself have '{BASE_KEY}:' "
                              f"(recipes allow one level of base)")
        layers.append((str(base_path), base_data))
    layers.append((str(path), data))
    return layers


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``['rollout.temperature=0.7', 'run.name=x']`` -> nested dict; values parsed as YAML."""
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not key=value (e.g. rollout.temperature=0.7)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of {part}")
        node[parts[-1]] = value
    return out


def _merge(base: DictConfig, data: Dict[str, Any], source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, data)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def load_config(recipe: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Resolve a recipe into a typed ``Config`` (dataclass instance). Raises ConfigError."""
    cfg: DictConfig = OmegaConf.structured(Config)
    for source, data in read_recipe_layers(recipe):
        check_keys(data, Config, "", source)
        cfg = _merge(cfg, data, source)
    over = parse_overrides(overrides)
    check_keys(over, Config, "", "command line")
    cfg = _merge(cfg, over, "command line")
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"missing or bad value for '{key}': {str(e).splitlines()[0]}") from None


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (enough to rerun: ``opd run config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_dict(cfg: Config) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]
