"""Compatibility name of :mod:`cifllm.core.config` (typed stage configs from YAML + ``key=value`` overrides)."""

from __future__ import annotations

from cifllm.core.config import (
    ConfigError,
    config_help,
    config_to_dict,
    describe_config,
    load_config,
    parse_overrides,
    save_config,
)

__all__ = ["ConfigError", "config_help", "config_to_dict", "describe_config", "load_config", "parse_overrides", "save_config"]
