"""The life of one service process: config, NATS, telemetry, health, signals, drain.

Every service is a class with `start()` and `stop()`; this module does the
rest the same way for all five, so `python -m services.<svc>`, the container
and `mailbus up` behave alike, and tests can run a service in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import uvloop
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.service import Service as MicroService
from nats.micro.service import ServiceConfig

from libs.common.config import Config, ConfigError, load_config
from libs.common.config.fieldtypes import split_host_port
from libs.common.contract import subjects
from libs.common.contract.errors import CannotStart
from libs.common.runtime import bus, maillog, nats_tls, topology
from libs.common.runtime.health import Health
from libs.common.runtime.liveconfig import ConfigFollower, LiveConfig, starting_config
from libs.common.runtime.metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING
from libs.common.runtime.telemetry import setup_telemetry

log = logging.getLogger(__name__)

VERSION = "0.1.0"
EX_CONFIG = 78  # sysexits: cannot start as configured; `mailbus up` does not restart it
LAG_EVERY_S = 10.0


@dataclass
class Context:
    """What a service gets from the runtime; it opens no connection of its own."""

    service: str
    config: Config
    nc: NATS
    js: JetStreamContext
    micro: MicroService
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # The revisions followed live (libs/common/runtime/liveconfig.py); `config` above is
    # swapped with each, for the code that reads it at use time.
    live: LiveConfig = field(init=False)

    def __post_init__(self) -> None:
        self.live = LiveConfig(self.service, self.instance, self.config)
        self.live.on_change(lambda config, _revision: lambda: setattr(self, "config", config))


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Take no new work, finish what is in flight, then return."""
        ...


ServiceFactory = Callable[[Context], Service]


def nats_servers(config: Config, override: Sequence[str] | None = None) -> list[str]:
    servers = list(override or config.nats.url)
    if not servers:
        raise ConfigError(
            ["nats.url: empty; only `mailbus up` starts an embedded server, give a URL here"]
        )
    return servers


@dataclass
class Running:
    """A started service and what it holds; `close()` drains it in order."""

    ctx: Context
    service: Service
    health: Health
    lag: asyncio.Task[None] | None = None
    follower: ConfigFollower | None = None

    async def close(self) -> None:
        self.health.ready = False  # a load balancer stops sending work first
        if self.lag is not None:
            self.lag.cancel()
        if self.follower is not None:
            await self.follower.stop()
        try:
            await self.service.stop()
        finally:
            await self.ctx.micro.stop()
            if not self.ctx.nc.is_closed:
                await self.ctx.nc.drain()
            self.health.close()


async def start_service(
    name: str,
    factory: ServiceFactory,
    config: Config,
    servers: Sequence[str],
    metrics_address: str | None = None,
) -> Running:
    health = Health()
    address = metrics_address or config.telemetry.metrics_address
    if address:
        host, port = split_host_port(address)
        health.serve(host, port)
    nc = await bus.connect(
        servers,
        name=subjects.service_name(name),
        credentials_file=config.nats.credentials_file,
        tls=nats_tls.client_context(config.nats),
    )
    js = await bus.wait_for_jetstream(nc)
    # Only `mailbus migrate` changes an existing stream; a service creates what is missing
    # and refuses to start beside a configuration other than its own (runtime/topology.py).
    await topology.prepare(js, replicas=config.nats.stream_replicas)
    micro = await add_service(
        nc,
        ServiceConfig(
            name=subjects.service_name(name),
            version=VERSION,
            description=f"mailbus {name}",
            metadata={"instance": f"{socket.gethostname()}-{os.getpid()}"},
        ),
    )
    # The bus's active revision, when there is one, rather than the file: so a restart
    # applies what waited for it. The NATS and telemetry settings above are the file's.
    config, revision = await starting_config(js, name, config)
    ctx = Context(service=name, config=config, nc=nc, js=js, micro=micro)
    ctx.live.started_at(revision)
    ctx.live.on_change(_follow_log_level)
    service = factory(ctx)
    await service.start()
    # After start, so each part has registered its live-apply hook: the bucket's active
    # revision (if any) replaces the file's configuration before the service is ready.
    follower = ConfigFollower(js, nc, ctx.live)
    await follower.start()
    # nats-py 2.16 can send flush's PING ahead of SUBs still being written, so a
    # single flush may return before the server knows our subscriptions; the
    # second round trip is ordered after them. Readiness must mean "answering".
    await nc.flush()
    await nc.flush()
    health.ready = True
    lag = None
    if subjects.SERVICE_CONSUMERS.get(name):
        lag = asyncio.create_task(report_consumer_lag(js, subjects.SERVICE_CONSUMERS[name]))
    return Running(ctx, service, health, lag, follower)


async def report_consumer_lag(
    js: JetStreamContext, consumers: Sequence[tuple[str, str]], every_s: float = LAG_EVERY_S
) -> None:
    """Keep the lag gauges fresh: what waits for each consumer, and what is unacked.

    Every replica reports the same shared consumer, so dashboards take max(), not sum().
    """
    while True:
        for stream, consumer in consumers:
            try:
                info = await js.consumer_info(stream, consumer)
            except Exception:  # not created yet, or NATS away: try again next round
                continue
            CONSUMER_PENDING.labels(stream, consumer).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(stream, consumer).set(info.num_ack_pending or 0)
        await asyncio.sleep(every_s)


async def serve(
    name: str,
    factory: ServiceFactory,
    config: Config,
    servers: Sequence[str],
    metrics_address: str | None = None,
) -> int:
    setup_telemetry(name, prefix=config.telemetry.service_name_prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A topology other than this version's raises TopologyMismatch, a CannotStart.
    running = await start_service(name, factory, config, servers, metrics_address)
    log.info("%s started", subjects.service_name(name))
    await stop.wait()
    log.info("%s draining", subjects.service_name(name))
    await running.close()
    log.info("%s stopped", subjects.service_name(name))
    return 0


def setup_logging(level: str = "INFO", fmt: str = "text", program: str = "mailbus") -> None:
    maillog.setup(level, fmt, program)


# --log-level or MAILBUS_LOG_LEVEL given: it wins over logging.level of every revision.
_log_level_override: str | None = None


def _follow_log_level(config: Config, _revision: int) -> Callable[[], None]:
    level = getattr(logging, config.logging.level.upper())

    def commit() -> None:
        if _log_level_override is None:
            logging.getLogger().setLevel(level)

    return commit


def main(name: str, factory: ServiceFactory, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"mailbus-{name}", description=f"mailbus {name} service")
    parser.add_argument("--config", default=os.environ.get("MAILBUS_CONFIG"), required=False)
    parser.add_argument(
        "--nats-url",
        action="append",
        help="overrides nats.url (repeatable; MAILBUS_NATS_URL, comma-separated, also works)",
        default=[u for u in os.environ.get("MAILBUS_NATS_URL", "").split(",") if u] or None,
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("MAILBUS_METRICS_ADDRESS"),
        help="overrides telemetry.metrics_address (host:port of /metrics, /healthz, /readyz)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MAILBUS_LOG_LEVEL"),
        help="overrides logging.level (MAILBUS_LOG_LEVEL also works)",
    )
    args = parser.parse_args(argv)
    global _log_level_override
    _log_level_override = args.log_level
    setup_logging(args.log_level or "INFO", program=name)
    if not args.config:
        parser.error("--config FILE (or MAILBUS_CONFIG) is required")
    try:
        config = load_config(args.config)
        servers = nats_servers(config, args.nats_url)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.logging.level, config.logging.format, name)
    try:
        # uvloop: a service's CPU goes to socket reads and writes and to scheduling
        # callbacks (NATS and SMTP), which libuv does for a fraction of asyncio's cost.
        return uvloop.run(serve(name, factory, config, servers, args.metrics_address))
    except CannotStart as exc:
        print(f"fatal: {exc}", file=sys.stderr, flush=True)
        return EX_CONFIG
