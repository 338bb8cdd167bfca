"""`mailbus queue` with postqueue/postsuper/postcat habits, against the real queue and
delivery services on a real nats-server: filters and ages, reasons per recipient,
JSON lines, several ids, ALL, ids on stdin, and the stored message."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from libs.common.config import load_config_text
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from tests.support import queue
from tests.support.cli import mailbus
from tests.support.queue import positive, receive, start_delivery, start_queue
from tests.support.sink import Sink
from tests.support.streams import completed, count_of, eventually

services = queue.services  # a shared fixture
BUSY = "451 4.2.0 mailbox busy, try later"
GONE = "452 4.2.2 over quota"


async def _queue(
    server: EmbeddedNats, *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    return await mailbus("queue", *args, "--nats-url", server.url, stdin=stdin)


async def _listed(server: EmbeddedNats, *filters: str) -> dict[str, dict[str, object]]:
    rc, out, err = await _queue(server, "list", "--json", *filters)
    assert rc == 0, err
    return {e["queue_id"]: e for e in map(json.loads, out.splitlines())}


async def test_queue_commands_as_postfix_operators_use_them(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory({"a@remote.test": BUSY, "b@remote.test": GONE, "c@remote.test": BUSY})
    config = load_config_text(
        "server: {hostname: mx.example.test, local_domains: [example.test]}\n"
        f"delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {port}}}, tls: none}}\n"
        "queue: {retry_interval: 10m, warn_after: 1d, bounce_after: 5d}\n"
    )
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    old = datetime.now(UTC) - timedelta(hours=3)
    await receive(js, "QA", ["a@remote.test", "b@remote.test"], sender="alice@example.test", at=old)
    await receive(
        js,
        "QB",
        ["c@remote.test"],
        sender="bob@example.test",
        body=b"Subject: cat me\r\n\r\nhello\r\n",
    )
    for qid in ("QA", "QB"):

        def deferred(q: str = qid) -> Awaitable[bool]:
            return positive(count_of(js, q, "DeliveryDeferred"))

        await eventually(deferred, qid)

    # Filters, age, the reason of each recipient.
    assert sorted(await _listed(nats_server)) == ["QA", "QB"]
    assert sorted(await _listed(nats_server, "--sender", "ALICE")) == ["QA"]
    assert sorted(await _listed(nats_server, "--recipient", "c@*")) == ["QB"]
    assert sorted(await _listed(nats_server, "--older-than", "1h")) == ["QA"]
    assert sorted(await _listed(nats_server, "--state", "held")) == []
    rc, out, err = await _queue(nats_server, "list")
    assert rc == 0, err
    assert " 3h " in out, out  # the age column
    assert "a@remote.test: (451 4.2.0 mailbox busy" in out and "b@remote.test: (452 4.2.2" in out
    rc, _, err = await _queue(nats_server, "list", "--older-than", "soon")
    assert rc != 0 and "--older-than" in err

    # postcat -q
    rc, out, err = await _queue(nats_server, "cat", "QB")
    assert rc == 0 and "Subject: cat me" in out and "hello" in out, err
    rc, _, err = await _queue(nats_server, "cat", "NOSUCH")
    assert rc == 1 and "NOSUCH" in err

    # hold ALL, release ids from stdin, several ids at once, and a bad id among them
    rc, out, err = await _queue(nats_server, "hold", "ALL")
    assert rc == 0, err
    assert {e["state"] for e in (await _listed(nats_server)).values()} == {"held"}
    rc, out, err = await _queue(nats_server, "release", "-", stdin=b"QA\nQB\n")
    assert rc == 0, err
    assert "QA" in out and "QB" in out
    rc, out, err = await _queue(nats_server, "hold", "QA", "NOSUCH", "QB")
    assert rc == 1 and "NOSUCH" in err, (out, err)
    assert {e["state"] for e in (await _listed(nats_server)).values()} == {"held"}
    rc, out, err = await _queue(nats_server, "release", "QA", "QB")
    assert rc == 0, err

    # released, each is attempted at once and deferred again; then the remote side
    # recovers and retry ALL delivers every deferred message
    async def both_deferred() -> bool:
        return {e["state"] for e in (await _listed(nats_server)).values()} == {"deferred"}

    await eventually(both_deferred, "attempted again after the release")
    sink.replies.clear()
    sink.replies["c@remote.test"] = BUSY  # QB stays, to be deleted
    rc, out, err = await _queue(nats_server, "retry", "ALL")
    assert rc == 0 and "QA" in out, err
    rc, out, err = await _queue(nats_server, "delete", "QB")
    assert rc == 0, err
    await eventually(lambda: completed(js, "QA"), "QA delivered")

    async def none_listed() -> bool:
        return await _listed(nats_server) == {}

    await eventually(none_listed, "QA and QB out of the listing")
