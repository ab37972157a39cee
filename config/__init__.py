"""Configuration: the schema that defines every object and its invariants, and the file loader."""

from config.loader import ConfigError, ConfigIssue, load_config, parse_config, validate_document
from config.schema import ScopegateConfig

__all__ = ["ConfigError", "ConfigIssue", "ScopegateConfig", "load_config", "parse_config", "validate_document"]
