"""A whole mailbus in the test's process, and what the tests that log in to it share.

`running_stack` starts a nats-server, an aiosmtpd sink as the relay host and the
services named, in that order; everything stops in reverse order at the end.
Policy's clock is the stack's `Clock`, which a test moves to expire a grant.
"""

from __future__ import annotations

import poplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from argon2 import PasswordHasher, Type
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from libs.common.config import Config, load_config_text
from libs.common.contract import subjects
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running, ServiceFactory, start_service
from services.delivery.service import DeliveryService
from services.ingress.service import IngressService
from services.policy.core.failures import FailedLogins
from services.policy.service import PolicyService
from services.queue.service import QueueService
from tests.support.sink import Sink, free_port

PASSWORD = "correct horse battery"
# Cheap parameters keep the suite fast; verification reads them from the hash itself.
PASSWORD_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID).hash(
    PASSWORD
)


@dataclass
class Clock:
    """Policy's clock, movable: moved past a grant's end, the grant has expired."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Stack:
    config: Config
    nc: NATS
    js: JetStreamContext
    sink: Sink
    url: str  # the nats-server's
    clock: Clock = field(default_factory=Clock)
    running: list[Running] = field(default_factory=list)

    @property
    def ingress(self) -> list[IngressService]:
        return [r.service for r in self.running if isinstance(r.service, IngressService)]

    def address(self, listener: str, replica: int = 0) -> tuple[str, int]:
        return self.ingress[replica].addresses[listener]


@asynccontextmanager
async def running_stack(
    tmp: Path, config_text: Callable[[int], str], services: Sequence[str]
) -> AsyncIterator[Stack]:
    """`config_text(sink_port)` is the YAML; `services` may name ingress more than once."""
    server = EmbeddedNats(data_dir=tmp / "nats", log_file=tmp / "nats.log")
    server.start()
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    config = load_config_text(config_text(port))
    nc = await bus.connect([server.url], name="test")
    js = await bus.wait_for_jetstream(nc)
    await bus.ensure_topology(js)
    stack = Stack(config, nc, js, sink, server.url)
    clock = stack.clock
    factories: dict[str, ServiceFactory] = {
        "policy": lambda ctx: PolicyService(ctx, clock=clock),
        "queue": QueueService,
        "delivery": DeliveryService,
        "ingress": IngressService,
    }
    try:
        for name in services:
            stack.running.append(await start_service(name, factories[name], config, [server.url]))
        yield stack
    finally:
        for running in reversed(stack.running):
            await running.close()
        await nc.close()
        controller.stop()
        server.stop()


def unverified() -> ssl.SSLContext:
    """A client context for the test certificates: encrypted, not verified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class POP3From(poplib.POP3):
    """poplib's client, bound to a chosen loopback address."""

    def __init__(self, addr: tuple[str, int], source: str = "127.0.0.1") -> None:
        self.source = source
        super().__init__(*addr, timeout=10)

    def _create_socket(self, timeout: Any) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


async def grant_of(js: JetStreamContext, ip: str) -> bool:
    """Whether policy holds a POP3-before-SMTP grant for `ip`."""
    kv = await js.key_value(subjects.POP3_GRANTS_BUCKET)
    try:
        await kv.get(subjects.token(ip))
    except KeyNotFoundError:
        return False
    return True


async def failed_logins(js: JetStreamContext, ip: str) -> int:
    kv = await js.key_value(subjects.AUTH_FAILURES_BUCKET)
    try:
        entry = await kv.get(subjects.token(ip))
    except KeyNotFoundError:
        return 0
    assert entry.value is not None
    counted = FailedLogins.decode(entry.value)
    return counted.count if counted else 0
