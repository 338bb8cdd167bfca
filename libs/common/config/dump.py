"""The effective configuration as YAML: what the services will run with, secrets masked."""

from __future__ import annotations

import io
from urllib.parse import urlsplit, urlunsplit

from ruamel.yaml import YAML

from .model import Config

MASK = "***"
_SECRET_KEYS = frozenset({"password", "password_hash"})


def effective_data(config: Config) -> object:
    """Every key with its value or default, as plain data, secrets masked."""
    return _masked(config.model_dump(mode="json"))


def effective_config_yaml(config: Config) -> str:
    """Every key with its value or default; durations as "30m", sizes as "25MB" or bytes."""
    data = effective_data(config)
    header = "# effective configuration: defaults filled in, users_file merged, secrets masked\n"
    return header + to_yaml(data)


def to_yaml(data: object) -> str:
    """Block-style YAML of plain data, keys in the model's order rather than sorted."""
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    # ruamel declares this attribute as None ("sort"), so mypy cannot know False is allowed.
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    yaml.dump(data, out)
    return out.getvalue()


def _masked(value: object, key: str = "") -> object:
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item, key) for item in value]
    if key in _SECRET_KEYS and value is not None:
        return MASK
    if key == "url" and isinstance(value, str):
        return _masked_url(value)
    return value


def _masked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    # nats://token@host and nats://user:pass@host both carry a secret in the URL.
    user = f"{parts.username}:{MASK}" if parts.password is not None else MASK
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
