"""How many SMTP and POP3 connections one client address holds, across every ingress instance.

Every ingress instance publishes its open connections (ConnectionReport, core
NATS, nothing stored; services/ingress/adapters/connections.py) and every
policy replica keeps a copy (core/connections.py), subscribed without a queue
group. A connect query carries the asking instance's own count; the others come
from the copy, so counting costs no round trip. On start, a replica says hello
and every instance answers with its whole table at once, rather than at its
next heartbeat; so it does when a change comes from an instance its copy does
not know (a new one, or one whose reports were lost for longer than their TTL,
as in a long nats-server outage).

Upgrading from the leases: an ingress of the previous version writes one key per
connection into CONNECTIONS_BUCKET and sends no count with its query. Such a
query is counted as before (the keys under the address, one stream-info
request) plus the copy; and for LEGACY_WINDOW_S after the last one that found
a key, the new instances' queries add the bucket's keys too, so during a
rolling upgrade the old and the new instances see each other's connections.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from pydantic import ValidationError

from libs.common.contract import subjects
from libs.common.contract.policy import ConnectionReport, HeldConnections
from services.policy.core.connections import ConnectionCopy

log = logging.getLogger(__name__)

# How long after an old ingress's last query the bucket is still counted for all.
LEGACY_WINDOW_S = 120.0
# At most one hello in this many seconds when changes arrive from instances the copy
# does not know, however many there are.
HELLO_EVERY_S = 1.0


class ConnectionCounter:
    """The leases of ingress instances of the previous version, in CONNECTIONS_BUCKET."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def count(self, client_ip: str) -> int:
        info = await self._js.stream_info(
            subjects.kv_stream(subjects.CONNECTIONS_BUCKET),
            subjects_filter=subjects.connection_leases_filter(client_ip),
        )
        return len(info.state.subjects or {})


class Connections:
    def __init__(
        self,
        nc: NATS,
        legacy: ConnectionCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._legacy = legacy
        self._clock = clock
        self.copy = ConnectionCopy()
        self._legacy_until = float("-inf")
        self._hello_at = float("-inf")
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            subjects.CONNECTIONS_REPORT_SUBJECT, cb=self._on_report
        )
        # The subscription is at the server before the hello asks for the tables. Twice:
        # nats-py writes flush()'s PING ahead of a SUB still in its buffer (as service.py).
        await self._nc.flush()
        await self._nc.flush()
        await self._hello(self._clock())

    async def _hello(self, now: float) -> None:
        """Every ingress instance: send your whole table now."""
        self._hello_at = now
        await self._nc.publish(subjects.CONNECTIONS_HELLO_SUBJECT, b"")

    async def stop(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception as exc:
                log.debug("connection reports: unsubscribe: %s", exc)

    async def _on_report(self, msg: Msg) -> None:
        try:
            report = ConnectionReport.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("connection report unreadable: %s", exc.errors()[0]["msg"])
            return
        now = self._clock()
        if self.copy.apply(report, now) and now - self._hello_at >= HELLO_EVERY_S:
            # A change from an instance unknown here: its table, and any other lost
            # with it (reports missed during an outage longer than the TTL), comes now
            # rather than at the next heartbeat.
            await self._hello(now)

    async def count(self, client_ip: str, held: HeldConnections | None) -> int:
        """The client's open connections everywhere, the asking one included."""
        now = self._clock()
        if held is None:
            # An ingress of the previous version (its connection a key in the bucket), or
            # a connection this version did not count (no address to key it by).
            leases = await self._legacy.count(client_ip) if self._legacy is not None else 0
            if leases:
                self._legacy_until = now + LEGACY_WINDOW_S
            return leases + self.copy.others(client_ip, None, now)
        total = held.count + self.copy.others(client_ip, held.instance, now)
        if self._legacy is not None and now < self._legacy_until:
            total += await self._legacy.count(client_ip)
        return total
