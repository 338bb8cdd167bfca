"""Errors found by checks that look at several keys at once.

Pydantic places such an error on the model that ran the check. The loader
needs the exact key (and so its line), and one check may find several
problems, so the error carries a list of (key path relative to that model,
message) under PROBLEMS; the loader turns each into its own line.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]
PROBLEMS = "problems"
ERROR_TYPE = "config"


def dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def problems(found: Sequence[tuple[Loc, str]]) -> PydanticCustomError:
    """One error for all problems found; readable as is outside the loader too."""
    text = "; ".join(f"{dotted(loc)}: {msg}" if loc else msg for loc, msg in found)
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": text, PROBLEMS: list(found)})


def problem(loc: Loc, message: str) -> PydanticCustomError:
    return problems([(loc, message)])
