"""The five services in-process against one nats-server, started in dependency order
and closed in reverse, for the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from libs.common.config import Config
from libs.common.runtime.service import Running, ServiceFactory, start_service
from services.delivery.service import DeliveryService
from services.ingress.service import IngressService
from services.notifier.service import NotifierService
from services.policy.service import PolicyService
from services.queue.service import QueueService

# Policy first (ingress asks it at connect), ingress last (it takes mail).
PIPELINE: Mapping[str, ServiceFactory] = {
    "policy": PolicyService,
    "queue": QueueService,
    "delivery": DeliveryService,
    "notifier": NotifierService,
    "ingress": IngressService,
}


@asynccontextmanager
async def pipeline(
    config: Config, servers: Sequence[str] | Callable[[str], Sequence[str]]
) -> AsyncIterator[dict[str, Running]]:
    """`servers` is the NATS URL list, or a function of the service name (own user)."""
    running: dict[str, Running] = {}
    try:
        for name, factory in PIPELINE.items():
            urls = servers(name) if callable(servers) else servers
            running[name] = await start_service(name, factory, config, list(urls))
        yield running
    finally:
        for item in reversed(list(running.values())):
            await item.close()


def smtp_address(running: Mapping[str, Running], listener: str = "smtp") -> tuple[str, int]:
    ingress = running["ingress"].service
    assert isinstance(ingress, IngressService)
    return ingress.addresses[listener]
