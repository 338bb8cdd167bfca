"""`mailbus config check FILE [--non-default]` and `mailbus config get KEY`: validate a
configuration, show what it amounts to (all of it, or like `postconf -n` only what
differs from the defaults), or one key's effective value (like `postconf KEY`)."""

from __future__ import annotations

import sys

from .dump import effective_config_yaml, effective_data, to_yaml
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


def config_check(path: str, non_default: bool = False) -> int:
    """Effective config on stdout and 0, or one line per error on stderr and 2."""
    config = checked(path)
    if config is None:
        return EXIT_INVALID
    if non_default:
        changed = differences(effective_data(config), effective_data(Config()))
        sys.stdout.write(to_yaml(changed) if changed is not _SAME else "")
    else:
        sys.stdout.write(effective_config_yaml(config))
    return EXIT_OK


def differences(value: object, default: object) -> object:
    """What of `value` is not as in `default`: mappings key by key, anything else whole."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {}
        for key, item in value.items():
            if key not in default:
                out[key] = item
                continue
            changed = differences(item, default[key])
            if changed is not _SAME:
                out[key] = changed
        return out or _SAME
    return _SAME if value == default else value


_SAME = object()


def config_get(path: str, key: str) -> int:
    """One key's effective value (secrets masked): a scalar as is, a section as YAML."""
    config = checked(path)
    if config is None:
        return EXIT_INVALID
    value: object = effective_data(config)
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            print(f"{path}: no key {key!r} (at {part!r})", file=sys.stderr)
            return EXIT_INVALID
    if isinstance(value, dict | list):
        sys.stdout.write(to_yaml(value))
    else:
        print("null" if value is None else str(value).lower() if isinstance(value, bool) else value)
    return EXIT_OK
