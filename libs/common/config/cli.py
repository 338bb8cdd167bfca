"""`mailbus config check FILE`: validate a configuration and show what it amounts to."""

from __future__ import annotations

import sys

from .dump import effective_config_yaml
from .loader import ConfigError, load_config

EXIT_OK = 0
EXIT_INVALID = 2


def config_check(path: str) -> int:
    """Effective config on stdout and 0, or one line per error on stderr and 2."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    for warning in config.warnings():
        print(f"{path}: warning: {warning}", file=sys.stderr)
    sys.stdout.write(effective_config_yaml(config))
    return EXIT_OK
