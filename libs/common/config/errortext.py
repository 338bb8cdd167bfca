"""Pydantic's error messages, reworded for someone editing a YAML file."""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from .problems import Loc

_SCALARS = (str, int, float, bool)


def error_message(error: ErrorDetails, loc: Loc) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key" + _suggestion(loc)
    if kind == "missing":
        return "required key is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {_shown(error['input'])}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_shown(error['input'])}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    message = error["msg"]
    if isinstance(error["input"], _SCALARS):
        message += f", got {error['input']!r}"
    return message


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, _SCALARS) or value is None else type(value).__name__


def _suggestion(loc: Loc) -> str:
    keys = _keys_at(loc[:-1])
    if not keys or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys_at(loc: Loc) -> list[str]:
    """The keys allowed at loc, found by walking the model's field types."""
    from .model import Config

    current: object = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) in (list, tuple):
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: object) -> object:
    """Peel Annotated[...] and `X | None` off a type."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            rest = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp
