"""Reading a configuration file: every problem reported at once, as FILE:LINE: key: message."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from libs.common.contract.errors import MailbusError

from .errortext import error_message
from .model import GROUP_REFERENCES, Config, unknown_group_problems
from .problems import ERROR_TYPE, PROBLEMS, Loc, dotted
from .yamlsource import Positions, YamlSyntaxError, parse_yaml


class ConfigError(MailbusError):
    """A configuration that cannot be used; `errors` holds one printable line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_config(path: str | os.PathLike[str]) -> Config:
    """The configuration in the file at path; relative paths inside it are from its directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return load_config_text(text, source=str(path), base_dir=Path(path).parent)


def load_config_text(
    text: str, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """The configuration in text; an empty text (or `null`) is the default configuration."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    try:
        data, positions = parse_yaml(text, source)
    except YamlSyntaxError as exc:
        raise ConfigError([exc.line]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the top level must be a mapping of sections"])
    merged, errors = _merge_users_file(data, positions, base)
    try:
        config = Config.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        found = _expand_all(exc) + _raw_group_references(data)
        raise ConfigError(_error_lines(found, positions, merged) + errors) from None
    if errors:
        raise ConfigError(errors)
    return config


@dataclass(frozen=True)
class _UsersFile:
    """Accounts from users_file sit at users[offset:] in the merged list."""

    source: str
    offset: int


def _merge_users_file(
    data: dict[object, object], positions: Positions, base: Path
) -> tuple[_UsersFile | None, list[str]]:
    """Appends users_file's accounts to users; errors of that file's own text."""
    name = data.get("users_file")
    users = data.get("users")
    if not isinstance(name, str) or not isinstance(users, list | None):
        return None, []  # validation reports what is wrong with these keys
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError):
        return None, []  # users_file's own check names the key and the reason
    try:
        extra, extra_positions = parse_yaml(text, str(path))
    except YamlSyntaxError as exc:
        return None, [exc.line]
    old: Loc = ()
    if isinstance(extra, dict) and set(extra) <= {"users"}:
        extra, old = extra.get("users"), ("users",)
    if extra is None:
        extra = []
    if not isinstance(extra, list):
        return None, [f"{path}:1: expected a list of users, or a mapping with only a users: key"]
    offset = len(users or [])
    data["users"] = [*(users or []), *extra]
    for index in range(len(extra)):
        positions.graft(extra_positions, (*old, index), ("users", offset + index))
    return _UsersFile(str(path), offset), []


def _raw_group_references(data: dict[object, object]) -> list[tuple[Loc, str]]:
    """Unknown group names, even where the model could not get as far as checking them."""
    groups = data.get("ip_groups")
    if not isinstance(groups, dict):
        return []
    refs: list[tuple[Loc, object]] = []
    for section, key in GROUP_REFERENCES:
        values = data.get(section)
        if isinstance(values, dict):
            refs.append(((section, key), values.get(key)))
    return unknown_group_problems(groups, refs)


def _expand_all(exc: ValidationError) -> list[tuple[Loc, str]]:
    return [item for error in exc.errors(include_url=False) for item in _expand(error)]


def _error_lines(
    found: list[tuple[Loc, str]], positions: Positions, merged: _UsersFile | None
) -> list[str]:
    main = positions.by_loc[()].source
    placed: list[tuple[bool, int, str]] = []
    for loc, message in found:
        where = positions.find(loc) or positions.by_loc[()]
        shown = dotted(_shown_loc(loc, merged, where.source))
        text = f"{shown}: {message}" if shown else message
        placed.append((where.source != main, where.line, f"{where.source}:{where.line}: {text}"))
    # The main file first, in line order, as an editor would walk through them.
    return list(dict.fromkeys(text for *_, text in sorted(placed, key=lambda p: p[:2])))


def _expand(error: ErrorDetails) -> list[tuple[Loc, str]]:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    ctx = error.get("ctx") or {}
    if error["type"] == ERROR_TYPE and PROBLEMS in ctx:
        return [((*loc, *rel), message) for rel, message in ctx[PROBLEMS]]
    return [(loc, error_message(error, loc))]


def _shown_loc(loc: Loc, merged: _UsersFile | None, source: str) -> Loc:
    # An account from users_file is shown with its index in that file, next to its line.
    if merged and source == merged.source and loc[:1] == ("users",) and len(loc) > 1:
        index = loc[1]
        if isinstance(index, int) and index >= merged.offset:
            return ("users", index - merged.offset, *loc[2:])
    return loc
