"""Leases on open SMTP and POP3 connections, so policy can count them across every ingress instance.

Each open connection is one key in CONNECTIONS_BUCKET (see
`subjects.connection_lease_key`), written before policy is asked at connect
(the connection counts itself, so two clients racing for the last slot
cannot both get it) and removed when the connection ends. Every key carries a
TTL of `ttl` seconds and is rewritten every `ttl / 3`: if this process dies
without a word (SIGKILL, a lost node), its keys expire within `ttl` seconds
of their last renewal and its connections stop counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass

from nats.js import JetStreamContext

from libs.common.config import ConfigError
from libs.common.contract import subjects
from libs.common.contract.policy import canonical_ip

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
MIN_TTL_S = 3.0  # NATS per-message TTLs count in whole seconds; renewal every ttl/3
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


@dataclass
class _Lease:
    key: str
    value: bytes
    lock: asyncio.Lock
    released: bool = False


class ConnectionLeases:
    def __init__(self, js: JetStreamContext, instance: str, ttl: float = DEFAULT_TTL_S) -> None:
        self._js = js
        self._instance = instance
        self.ttl = ttl
        self._leases: dict[str, _Lease] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._stream = subjects.kv_stream(subjects.CONNECTIONS_BUCKET)

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="connection-leases")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for session_id in list(self._leases):
            self.release(session_id)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def acquire(self, session_id: str, client_ip: str, listener: str) -> None:
        """Count this connection; a failure is logged and the session goes on uncounted."""
        ip = canonical_ip(client_ip)
        if ip is None:
            return
        key = subjects.connection_lease_key(ip, self._instance, session_id)
        value = json.dumps(
            {"ip": ip, "instance": self._instance, "listener": listener, "since": time.time()}
        ).encode()
        lease = _Lease(key, value, asyncio.Lock())
        self._leases[session_id] = lease
        try:
            await self._write(lease)
        except Exception as exc:
            log.warning("connection from %s not counted: %s: %s", ip, type(exc).__name__, exc)

    def release(self, session_id: str) -> None:
        """The connection is gone; its key goes in the background (the TTL if that fails)."""
        lease = self._leases.pop(session_id, None)
        if lease is None:
            return
        task = asyncio.get_running_loop().create_task(self._remove(lease))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @property
    def held(self) -> int:
        return len(self._leases)

    async def _write(self, lease: _Lease) -> None:
        async with lease.lock:
            if lease.released:
                return
            await self._js.publish(
                subjects.kv_subject(subjects.CONNECTIONS_BUCKET, lease.key),
                lease.value,
                msg_ttl=self.ttl,
            )

    async def _remove(self, lease: _Lease) -> None:
        # Under the lease's lock: a renewal in flight cannot write the key back after this.
        async with lease.lock:
            lease.released = True
            try:
                await self._js.purge_stream(
                    self._stream,
                    subject=subjects.kv_subject(subjects.CONNECTIONS_BUCKET, lease.key),
                )
            except Exception as exc:
                log.warning("lease %s not removed (expires by itself): %s", lease.key, exc)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            leases = list(self._leases.values())
            results = await asyncio.gather(
                *(self._write(lease) for lease in leases), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.warning("%d connection lease(s) not renewed: %s", len(failed), failed[0])
