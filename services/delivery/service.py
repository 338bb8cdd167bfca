"""Wiring of the delivery service: the shared jobs consumer around the worker."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from libs.common.config import Config
from libs.common.mail.bodies import BodyStore
from libs.common.mail.dns import resolver_of
from libs.common.runtime import consumers
from libs.common.runtime.liveconfig import Commit
from libs.common.runtime.service import Context
from services.delivery.adapters.consumer import ack_wait_from_env, jobs_consumer
from services.delivery.adapters.courier import Courier, CourierSettings, RelayTarget
from services.delivery.adapters.dns import MxResolver
from services.delivery.adapters.local_store import LocalDelivery, local_settings
from services.delivery.adapters.worker import DeliveryWorker, WorkerSettings


def relay_target(config: Config) -> RelayTarget | None:
    relay = config.delivery.relay_host
    if not relay.host:
        # In mx mode no job goes to the relay (the queue routes by domain).
        return None
    auth = relay.auth
    return RelayTarget(
        host=relay.host,
        port=relay.port,
        auth_method=auth.method if auth.enabled else None,
        username=auth.username,
        password=auth.effective_password,
        pop3_port=auth.pop3_port,
        allow_plaintext=auth.allow_plaintext,
        pop3_grant_s=auth.pop3_grant.total_seconds(),
    )


def courier_of(config: Config) -> Courier:
    delivery = config.delivery
    settings = CourierSettings(
        helo=config.server.hostname,
        tls=delivery.tls,
        connect_timeout=delivery.connect_timeout.total_seconds(),
        mx_port=delivery.mx_port,
        relay=relay_target(config),
        ca_file=delivery.tls_ca_file,
    )
    return Courier(settings, MxResolver(resolver_of(config.dns)))


class DeliveryService:
    """`ack_wait` (seconds) defaults to MAILBUS_DELIVERY_ACK_WAIT, else 8 s."""

    def __init__(self, ctx: Context, ack_wait: float | None = None) -> None:
        self.ctx = ctx
        self._ack_wait = ack_wait if ack_wait is not None else ack_wait_from_env()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._worker: DeliveryWorker | None = None
        ctx.live.on_change(self._prepare)

    def _prepare(self, config: Config, revision: int) -> Commit:
        """Relay host, TLS, timeouts and ports for the next attempt; a job under way
        finishes with the courier it started with."""
        courier = courier_of(config)

        def commit() -> None:
            if self._worker is not None:
                self._worker._courier = courier

        return commit

    async def start(self) -> None:
        config = self.ctx.config
        slots = config.delivery.max_delivery_threads
        bodies = BodyStore(self.ctx.js)
        settings = WorkerSettings(slots=slots, ack_wait=self._ack_wait, instance=self.ctx.instance)
        local = LocalDelivery(self.ctx.js, local_settings(config))
        self._worker = DeliveryWorker(
            self.ctx.js, bodies, courier_of(config), settings, local=local
        )
        self._sub = await consumers.bind(self.ctx.js, jobs_consumer(slots, self._ack_wait))
        self._task = asyncio.create_task(
            self._worker.run(self._sub, self._stopping), name="delivery-fetch"
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._worker is not None:
            await self._worker.drain()
        if self._sub is not None:
            await self._sub.unsubscribe()
