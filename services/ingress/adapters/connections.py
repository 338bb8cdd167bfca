"""This instance's open SMTP and POP3 connections, told to every policy replica.

The table lives here, in memory: a connection is counted the moment it is
accepted (before policy is asked at connect, so two clients racing for the
last slot on this instance cannot both get it) and uncounted when it ends.
Policy learns the counts of every instance from `ConnectionReport`s on core
NATS, so a connection costs no stored write and no awaited round trip:

- a change is published as soon as the event loop is free (the addresses that
  changed in one pass go out in one report), with their absolute counts;
- the whole table goes out every `ttl / 3` seconds as a heartbeat, and at once
  when a new policy replica says hello; a lost report is repaired by the next;
- a process that dies without a word stops sending heartbeats, and policy stops
  counting its connections `ttl` seconds after the last one.

The connect query carries this instance's own count (`held`), so the decision
never waits for a report to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import Counter

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.common.config import ConfigError
from libs.common.contract import subjects
from libs.common.contract.policy import ConnectionReport, HeldConnections, canonical_ip

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
MIN_TTL_S = 3.0
# Not in the config file: how long a crashed instance's connections may keep counting is
# an operational bound, not policy. Tests shorten it to see a crash heal quickly.
TTL_ENV = "MAILBUS_CONNECTION_LEASE_TTL"


def lease_ttl() -> float:
    """Seconds from the environment (TTL_ENV), DEFAULT_TTL_S when unset."""
    text = os.environ.get(TTL_ENV, "").strip()
    try:
        ttl = float(text) if text else DEFAULT_TTL_S
    except ValueError:
        raise ConfigError([f"{TTL_ENV}: {text!r} is not a number of seconds"]) from None
    if ttl < MIN_TTL_S:
        raise ConfigError([f"{TTL_ENV}: at least {MIN_TTL_S:g} seconds, not {ttl:g}"])
    return ttl


class ConnectionTable:
    def __init__(self, nc: NATS, instance: str, ttl: float = DEFAULT_TTL_S) -> None:
        self._nc = nc
        # A process restarted under the same name (a container's pid 1) is a new instance:
        # its first reports must not be taken for stale ones of its predecessor.
        self.instance = f"{instance}.{secrets.token_hex(4)}"
        self.ttl = ttl
        self._sessions: dict[str, str] = {}  # session id -> canonical client address
        self._counts: Counter[str] = Counter()
        self._changed: set[str] = set()
        self._seq = 0
        self._flush_scheduled = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._hello: Subscription | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._hello = await self._nc.subscribe(
            subjects.CONNECTIONS_HELLO_SUBJECT, cb=self._on_hello
        )
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="connection-reports")
        self._send(full=True)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._hello is not None:
            with contextlib.suppress(Exception):
                await self._hello.unsubscribe()
        # Gone: policy forgets this instance now rather than after the TTL.
        self._sessions.clear()
        self._counts.clear()
        self._send(full=True, ttl=0.0)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def acquire(self, session_id: str, client_ip: str) -> HeldConnections | None:
        """Count this connection; what the connect query carries (None: not counted)."""
        ip = canonical_ip(client_ip)
        if ip is None or session_id in self._sessions:
            return None
        self._sessions[session_id] = ip
        self._counts[ip] += 1
        self._changed_soon(ip)
        return HeldConnections(instance=self.instance, count=self._counts[ip])

    def release(self, session_id: str) -> None:
        """The connection is gone (or exempt from the limit): it counts no more."""
        ip = self._sessions.pop(session_id, None)
        if ip is None:
            return
        self._counts[ip] -= 1
        if self._counts[ip] <= 0:
            del self._counts[ip]
        self._changed_soon(ip)

    @property
    def held(self) -> int:
        return len(self._sessions)

    def _changed_soon(self, ip: str) -> None:
        self._changed.add(ip)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._changed:
            self._send(full=False)

    def _send(self, full: bool, ttl: float | None = None) -> None:
        if full:
            counts = dict(self._counts)
        else:
            counts = {ip: self._counts.get(ip, 0) for ip in self._changed}
        self._changed.clear()
        self._seq += 1
        report = ConnectionReport(
            instance=self.instance,
            seq=self._seq,
            ttl=self.ttl if ttl is None else ttl,
            full=full,
            counts=counts,
        )
        # A core publish only fills the client's buffer (nothing is awaited from the
        # server); a task, as nats-py's publish is a coroutine.
        task = asyncio.get_running_loop().create_task(self._publish(report))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, report: ConnectionReport) -> None:
        try:
            await self._nc.publish(
                subjects.CONNECTIONS_REPORT_SUBJECT, report.model_dump_json().encode()
            )
        except Exception as exc:
            # The next heartbeat carries the whole table again.
            log.warning("connection report not sent: %s: %s", type(exc).__name__, exc)

    async def _on_hello(self, msg: Msg) -> None:
        self._send(full=True)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            self._send(full=True)
