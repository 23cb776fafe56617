"""Settings: the schema (``schema``), recipe loading (``load``) and validation (``validate``)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from opd_megatron.config.load import config_dict, load_config, to_yaml
from opd_megatron.config.schema import Config
from opd_megatron.config.validate import validate


def load_and_validate(recipe: str, overrides: Sequence[str] = ()) -> Tuple[Config, Dict[str, Optional[dict]]]:
    """Load a recipe with overrides and run every pre-flight check. Raises ConfigError."""
    cfg = load_config(recipe, overrides)
    hf = validate(cfg)
    return cfg, hf


__all__ = ["Config", "load_config", "load_and_validate", "validate", "to_yaml", "config_dict"]
