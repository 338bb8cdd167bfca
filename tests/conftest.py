"""Shared fixtures: a real nats-server with JetStream per test, never a mock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from tests.support.sink import sink_factory  # noqa: F401  (a fixture shared by modules)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(data_dir=tmp_path / "nats", log_file=tmp_path / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    conn = await bus.connect([nats_server.url], name="test")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    stream = await bus.wait_for_jetstream(nc)
    await bus.ensure_topology(stream)
    return stream
