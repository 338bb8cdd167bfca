"""YAML text to plain Python data, remembering the line of every key and list item.

The round-trip loader knows where each node came from; the data handed to
pydantic must be plain dicts and lists, so the lines are kept aside in a
`Positions` map keyed by the same location tuples pydantic reports.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from libs.common.contract.errors import MailbusError

from .problems import Loc


@dataclass(frozen=True)
class Where:
    source: str
    line: int


@dataclass
class Positions:
    by_loc: dict[Loc, Where] = field(default_factory=dict)

    def find(self, loc: Loc) -> Where | None:
        """Where the key at loc was written, else where its nearest written parent was."""
        for end in range(len(loc), -1, -1):
            where = self.by_loc.get(loc[:end])
            if where is not None:
                return where
        return None

    def graft(self, other: Positions, old: Loc, new: Loc) -> None:
        """Take other's positions under old, filed under new instead."""
        for loc, where in other.by_loc.items():
            if loc[: len(old)] == old:
                self.by_loc[new + loc[len(old) :]] = where


class YamlSyntaxError(MailbusError):
    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def parse_yaml(text: str, source: str) -> tuple[object, Positions]:
    """Plain data and positions, or YamlSyntaxError with one "FILE:LINE: ..." line."""
    try:
        node = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise YamlSyntaxError(f"{source}:{line}: YAML syntax error: {what}") from None
    except YAMLError as exc:
        raise YamlSyntaxError(f"{source}:1: YAML syntax error: {exc}") from None
    positions = Positions({(): Where(source, 1)})
    return _plain(node, (), positions, source), positions


def _plain(node: object, loc: Loc, positions: Positions, source: str) -> object:
    if isinstance(node, CommentedMap):
        out: dict[object, object] = {}
        for key, value in node.items():
            plain_key = _scalar(key)
            child = (*loc, _loc_part(plain_key))
            # A key brought in by a merge (<<: *anchor) has no line here; use the mapping's.
            line = node.lc.data[key][0] if key in node.lc.data else node.lc.line
            positions.by_loc[child] = Where(source, line + 1)
            out[plain_key] = _plain(value, child, positions, source)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*loc, index)
            line = node.lc.data[index][0] if index in node.lc.data else node.lc.line
            positions.by_loc[child] = Where(source, line + 1)
            items.append(_plain(value, child, positions, source))
        return items
    return _scalar(node)


def _scalar(node: object) -> object:
    # ruamel's scalar subclasses carry formatting; pydantic should see plain values.
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):
        # An unquoted 2024-01-01 becomes a date; no key takes one, so show it as written.
        return node.isoformat()
    return str(node)


def _loc_part(key: object) -> str | int:
    return key if isinstance(key, str | int) else str(key)
