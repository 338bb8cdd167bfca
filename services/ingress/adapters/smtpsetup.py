"""aiosmtpd's per-connection set-up without its per-connection introspection.

aiosmtpd builds one SMTP protocol object per connection, and its `__init__` finds
the AUTH mechanisms with `inspect.getmembers` on the object and on the handler
(every attribute fetched, sorted, then all but the `auth_` ones thrown away) and
checks the EHLO hook's arity with `inspect.signature`. Measured: about 40 % of the
0.4 ms of CPU that constructing one ingress session costs, paid again by every r1
message. The answers depend only on the classes, so `install` gives aiosmtpd.smtp
a stand-in for `inspect` that works the `auth_` names out once per class and keeps
each hook's signature.

It is tied to the pinned aiosmtpd (PINNED): `getmembers` here returns only the
`auth_` members, which is all aiosmtpd 1.4.6's one call keeps. Another version
gets the real `inspect`, so an upgrade is slower, never wrong.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import aiosmtpd
import aiosmtpd.smtp

PINNED = "1.4.6"
_PREFIX = "auth_"


class _ClassInspect:
    """What aiosmtpd.smtp asks of `inspect`, answered from per-class caches."""

    def __init__(self) -> None:
        self._names: dict[type, tuple[str, ...]] = {}
        self._signatures: dict[tuple[object, bool], inspect.Signature] = {}

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        cls = type(obj)
        names = self._names.get(cls)
        if names is None:
            names = tuple(n for n in dir(cls) if n.startswith(_PREFIX))
            self._names[cls] = names
        # An instance attribute of that prefix would shadow or add to the class's.
        extra = [n for n in vars(obj) if n.startswith(_PREFIX)] if hasattr(obj, "__dict__") else []
        found = sorted({*names, *extra})
        return [(n, getattr(obj, n)) for n in found]

    def signature(self, fn: Callable[..., Any]) -> inspect.Signature:
        bound = isinstance(fn, types.MethodType)
        key = (fn.__func__ if bound else fn, bound)  # type: ignore[attr-defined]
        sig = self._signatures.get(key)
        if sig is None:
            sig = inspect.signature(fn)
            self._signatures[key] = sig
        return sig


def install() -> bool:
    """Give aiosmtpd.smtp the cached stand-in; False (nothing changed) on another version."""
    if aiosmtpd.__version__ != PINNED:
        return False
    aiosmtpd.smtp.inspect = _ClassInspect()  # type: ignore[attr-defined,assignment]
    return True
