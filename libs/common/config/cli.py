"""`mailbus config check FILE`: validate a configuration and show what it amounts to."""

from __future__ import annotations

import sys

from .dump import effective_config_yaml
from .loader import ConfigError, load_config
from .model import Config

EXIT_OK = 0
EXIT_INVALID = 2


def checked(path: str) -> Config | None:
    """The configuration, its warnings on stderr; None after its errors on stderr.

    `config check` and `config apply` both report through this, so they say the same.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None
    for warning in config.warnings():
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return config


def config_check(path: str) -> int:
    """Effective config on stdout and 0, or one line per error on stderr and 2."""
    config = checked(path)
    if config is None:
        return EXIT_INVALID
    sys.stdout.write(effective_config_yaml(config))
    return EXIT_OK
