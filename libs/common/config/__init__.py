"""mailbus configuration: one YAML file, validated in full before anything starts.

    from libs.common.config import load_config
    config = load_config("mailbus.yaml")   # ConfigError lists every problem as FILE:LINE: key: ...

The model is the single source of every key's type, default and meaning;
docs/configuration.md is generated from it by `python -m libs.common.config.reference`.
"""

from .ipgroups import IpGroup
from .loader import ConfigError, load_config, load_config_text
from .model import Config
from .units import parse_duration, parse_size

__all__ = [
    "Config",
    "ConfigError",
    "IpGroup",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_size",
]
