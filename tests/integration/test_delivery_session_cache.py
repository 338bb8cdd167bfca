"""The connection cache on its own: which session serves which key, and for how long.

Sessions here are never connected (closing one is then immediate); the cache's
use against a real SMTP server is in test_delivery_routes.py.
"""

from __future__ import annotations

import asyncio

from libs.common.contract.events import Destination
from services.delivery.adapters.courier import Courier, CourierSettings, RelayTarget
from services.delivery.adapters.session_cache import SessionCache, SessionKey
from services.delivery.adapters.smtp_client import SessionSettings, SmtpSession
from services.delivery.core.mx import Endpoint

SETTINGS = SessionSettings(helo="mx.example.test", tls="opportunistic", connect_timeout=5)
RELAY = SessionKey("relay:", SETTINGS)


def session() -> SmtpSession:
    made = SmtpSession(Endpoint("relay.test", "127.0.0.1", 25), SETTINGS)
    made.healthy = True  # as after a transaction that went well
    return made


async def test_a_session_serves_only_its_own_key() -> None:
    cache = SessionCache()
    parked = session()
    cache.give(RELAY, parked)
    other_login = SessionKey(
        "relay:", SessionSettings("mx.example.test", "opportunistic", 5, "u", "p")
    )
    assert cache.take(SessionKey("mx:example.com", SETTINGS)) is None
    assert cache.take(other_login) is None
    assert cache.take(RELAY) is parked
    assert cache.take(RELAY) is None  # handed out: not twice
    await cache.close()


async def test_what_cannot_serve_again_is_not_kept() -> None:
    cache = SessionCache(max_transactions=3, max_age_s=60)
    broken, worn, old = session(), session(), session()
    broken.healthy = False
    worn.transactions = 3
    old.opened_at -= 61
    for s in (broken, worn, old):
        cache.give(RELAY, s)
    assert len(cache) == 0
    await cache.close()


async def test_idle_sessions_expire_and_are_bounded() -> None:
    cache = SessionCache(idle_s=0.2, max_idle=2)
    first, second, third = session(), session(), session()
    for s in (first, second, third):
        cache.give(RELAY, s)
    await asyncio.sleep(0)  # closing runs as its own task
    assert len(cache) == 2 and not first.healthy  # the oldest made room
    await asyncio.sleep(0.4)
    assert len(cache) == 0 and cache.take(RELAY) is None
    await cache.close()


def test_the_key_follows_every_setting_a_session_is_opened_with() -> None:
    def courier(password: str, tls: str = "opportunistic") -> Courier:
        relay = RelayTarget("127.0.0.1", 25, "smtp_auth", "mailbus", password)
        return Courier(CourierSettings("mx.example.test", tls, 5.0, relay=relay))

    relay = Destination(kind="relay")
    assert courier("a").session_key(relay) == courier("a").session_key(relay)
    assert courier("a").session_key(relay) != courier("b").session_key(relay)
    assert courier("a").session_key(relay) != courier("a", "required").session_key(relay)
    mx = courier("a").session_key(Destination(kind="mx", domain="example.com"))
    assert mx is not None and mx.settings.password is None  # no relay login to an MX
    assert courier("a").session_key(Destination(kind="local", domain="example.test")) is None
