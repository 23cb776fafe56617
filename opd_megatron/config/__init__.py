"""Settings: the schema (``schema``: every field with its default, doc, choices and range),
recipe loading (``load``) and the config-only checks (``validate``). The checks that read
files or ask servers are ``opd_megatron.run.preflight``."""

from __future__ import annotations

from opd_megatron.config.load import config_dict, load_config, to_yaml
from opd_megatron.config.schema import Config
from opd_megatron.config.validate import validate

__all__ = ["Config", "load_config", "validate", "to_yaml", "config_dict"]
