"""`mailbus migrate`: create and update the bus's streams, buckets and stores.

The one step that changes the topology (libs/common/runtime/topology.py): run it
before the services of a new version start (`mailbus up` does; in a cluster, a Job
before the upgrade). `--check` only lists the differences and exits 1 if there are
any. The replica count is `nats.stream_replicas` of `--config`, or `--replicas`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from libs.common.contract.errors import MailbusError
from ops import ctl

if TYPE_CHECKING:
    from libs.common.config import Config

NAME = "mailbus-migrate"


def add_parser(sub: Any) -> None:
    common = ctl.connection_options("NATS")
    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="create and update the bus's streams (run before upgrades)",
    )
    p.add_argument("--replicas", type=int, default=None, help="overrides nats.stream_replicas")
    p.add_argument("--check", action="store_true", help="only list differences; exit 1 if any")
    p.set_defaults(func=run)


async def migrate_at(urls: list[str], config: Config) -> list[str]:
    """What `mailbus up` runs before it starts the services."""
    from libs.common.runtime import bus, nats_tls, topology

    nc = await bus.connect(
        urls,
        name=NAME,
        credentials_file=config.nats.credentials_file,
        tls=nats_tls.client_context(config.nats),
    )
    try:
        return await topology.migrate(await bus.wait_for_jetstream(nc), config.nats.stream_replicas)
    finally:
        await nc.close()


def replicas_of(args: argparse.Namespace) -> int:
    if args.replicas is not None:
        return int(args.replicas)
    if args.config:
        from libs.common.config import load_config

        return load_config(args.config).nats.stream_replicas
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except ctl.CtlError as exc:
        return ctl.report("migrate", exc)
    except MailbusError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    from libs.common.runtime import topology, topology_bodies

    replicas = replicas_of(args)
    async with ctl.connection(args, NAME) as nc:
        js = nc.jetstream()
        if args.check:
            found = await topology.inspect(js, replicas)
            for name in found.missing:
                print(f"{name}: missing")
            for line in found.differences:
                print(line)
            old = await topology_bodies.old_bucket_present(js)
            if old:
                print(f"{topology_bodies.OLD_BUCKET}: old object store, its bodies to be moved")
            return 1 if found.missing or found.differences or old else 0
        changed = await topology.migrate(js, replicas)
    for line in changed:
        print(f"migrated {line}")
    print(f"topology up to date ({replicas} replica{'s' if replicas > 1 else ''})")
    return 0
