"""Topology ownership: `mailbus migrate` changes the streams, services only check them.

A stream left by another version (here MAILBUS_EVENTS with a 60 s duplicate window)
is not "brought to ours" by a service at start: the service refuses to start and
names the difference, and the stream stays as it was until `mailbus migrate`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.runtime import bus, topology
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import EX_CONFIG
from tests.support.cli import mailbus
from tests.support.procs import processes


async def test_what_ensure_topology_makes_is_found_as_ours(js: JetStreamContext) -> None:
    found = await topology.inspect(js, replicas=1)
    assert found.missing == [] and found.differences == []
    await topology.prepare(js, replicas=1)  # nothing to do, nothing refused


async def test_a_fresh_server_gets_everything_at_a_service_start(
    nats_server: EmbeddedNats,
) -> None:
    nc = await bus.connect([nats_server.url], name="test")
    try:
        js = await bus.wait_for_jetstream(nc)
        assert (await topology.inspect(js, 1)).missing  # nothing made yet
        await topology.prepare(js, 1)
        found = await topology.inspect(js, 1)
        assert found.missing == [] and found.differences == []
    finally:
        await nc.close()


async def test_a_service_refuses_another_versions_stream_and_migrate_fixes_it(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    info = await js.stream_info(subjects.EVENTS_STREAM)
    other = info.config
    other.duplicate_window = 60.0
    await js.update_stream(other)

    async with processes(tmp_path, "server: {hostname: mx.example.test}\n", nats_server.url) as p:
        queue = await p.start("queue")
        async with asyncio.timeout(30):
            code = await queue.proc.wait()
        assert code == EX_CONFIG, queue.tail()
        assert "MAILBUS_EVENTS: duplicate_window is 60.0, this version needs 7200.0" in queue.tail()
        assert "mailbus migrate" in queue.tail()
        after = await js.stream_info(subjects.EVENTS_STREAM)
        assert after.config.duplicate_window == 60.0  # left as it was

        rc, out, _ = await mailbus("migrate", "--check", "--nats-url", nats_server.url)
        assert rc == 1 and "MAILBUS_EVENTS: duplicate_window" in out
        rc, out, err = await mailbus("migrate", "--nats-url", nats_server.url)
        assert rc == 0, err
        assert "migrated MAILBUS_EVENTS: duplicate_window" in out
        rc, out, _ = await mailbus("migrate", "--check", "--nats-url", nats_server.url)
        assert rc == 0 and out == ""

        queue = await p.start("queue")
        await queue.ready()
