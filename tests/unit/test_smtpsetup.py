"""aiosmtpd's set-up with the per-class `inspect` stand-in gives the answers of the real one."""

from __future__ import annotations

import inspect
from typing import Any

import aiosmtpd.smtp
import pytest

from services.ingress.adapters import smtpsetup
from services.ingress.adapters.handler import IngressHandler
from services.ingress.adapters.listener import Listener, ListenerSettings, Sessions
from services.ingress.adapters.smtp import IngressSMTP


def _session(require_auth: bool) -> IngressSMTP:
    settings = ListenerSettings("smtp", "mx.example.test", "none", require_auth=require_auth)
    listener = Listener(settings, None, None, Sessions())  # type: ignore[arg-type]
    return IngressSMTP(listener, IngressHandler(listener))


def _seen(session: IngressSMTP) -> dict[str, Any]:
    return {
        "auth": {
            name: (impl.method.__name__, impl.is_builtin)
            for name, impl in session._auth_methods.items()
        },
        "hooks": sorted(session._handle_hooks),
        "ehlo": session._ehlo_hook_ver,
        "commands": sorted(session._smtp_methods),
    }


@pytest.mark.parametrize("require_auth", [False, True])
async def test_the_stand_in_finds_what_inspect_finds(require_auth: bool) -> None:
    assert smtpsetup.install()  # the pinned aiosmtpd: the stand-in is in use
    assert isinstance(aiosmtpd.smtp.inspect, smtpsetup._ClassInspect)  # type: ignore[attr-defined]
    fast = _seen(_session(require_auth))
    aiosmtpd.smtp.inspect = inspect  # type: ignore[attr-defined]
    try:
        slow = _seen(_session(require_auth))
    finally:
        smtpsetup.install()
    assert fast == slow
    assert {"LOGIN", "PLAIN"} <= set(fast["auth"])  # aiosmtpd's built-in mechanisms
    assert fast["ehlo"] == "new"


async def test_an_instance_attribute_counts_like_inspects() -> None:
    class Handler:
        def auth_CLASSY(self) -> None: ...

    handler = Handler()
    handler.auth_EXTRA = lambda: None  # type: ignore[attr-defined]
    stand_in = smtpsetup._ClassInspect()
    for _ in range(2):  # the second answer comes from the cache
        got = [name for name, _ in stand_in.getmembers(handler)]
        want = [n for n, _ in inspect.getmembers(handler) if n.startswith("auth_")]
        assert got == want == ["auth_CLASSY", "auth_EXTRA"]
