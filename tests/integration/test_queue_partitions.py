"""The queue as three replicas over its partitions: sharing, a SIGKILL under load, and
the operator's commands answered across replicas."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import JetStreamContext

from bench.chaos import queue_holders, run
from libs.common.config import load_config_text
from libs.common.contract import subjects
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.lease import slot_of
from libs.common.runtime.service import Running, start_service
from services.queue.adapters.partitions import Partitions
from services.queue.service import QueueService
from tests.support import queue
from tests.support.cli import mailbus
from tests.support.queue import positive, receive, start_delivery
from tests.support.sink import Sink
from tests.support.streams import count_of, eventually

services = queue.services  # a shared fixture
P = subjects.QUEUE_PARTITIONS
BUSY = "451 4.2.0 mailbox busy, try later"


async def test_three_replicas_one_killed_under_load_lose_nothing(tmp_path: Path) -> None:
    """Three queue processes share the partitions; the owner of partition 0 is SIGKILLed
    (by PID) while mail flows and is not started again. Its partitions move to the other
    two by themselves, nothing accepted is lost, the queue drains, and `mailbus queue
    list` still covers every partition."""
    listed: list[tuple[int, str, str]] = []

    async def after(urls: list[str]) -> None:
        nc = await bus.connect(urls, name="test")
        try:
            holders = await queue_holders(nc.jetstream())
        finally:
            await nc.close()
        listed.append(await mailbus("queue", "list", "--json", "--nats-url", urls[0]))
        shares.update(Counter(slot_of(v.encode()) for v in holders.values()))

    shares: Counter[str | None] = Counter()
    report = await run(
        tmp_path,
        n=300,
        replicas=1,
        queue_replicas=3,
        nats_nodes=1,
        kinds=("queue",),
        kill_every_s=4.0,
        drain_s=90.0,
        threads=8,
        restart=False,
        on_loaded=after,
    )
    print("\n".join(report.lines()))
    (kill,) = report.kills
    # Before the kill the three shared the partitions, a third each (6, 5, 5 of 16).
    assert sorted(kill.owners.values()) == [5, 5, 6], kill.owners
    assert kill.takeover is not None  # every partition had a live owner again, unaided
    assert report.accepted == report.sent
    assert report.lost == 0 and report.stuck == 0
    assert report.delivered == report.accepted
    assert report.duplicated <= max(1, report.accepted // 100)
    # After it, the two left own all of them, half each, and answer the listing.
    assert sorted(shares.values()) == [P // 2, P // 2], shares
    rc, out, err = listed[0]
    assert rc == 0, err
    assert out == ""  # drained


async def _three(config_text: str, server: EmbeddedNats) -> list[Running]:
    config = load_config_text(config_text)
    return [await start_service("queue", QueueService, config, [server.url]) for _ in range(3)]


async def test_operator_commands_reach_the_owner_of_each_message(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    _, port = sink_factory({f"r{i}@remote.test": BUSY for i in range(8)})
    text = (
        "server: {hostname: mx.example.test, local_domains: [example.test]}\n"
        f"delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {port}}}, tls: none}}\n"
        "queue: {retry_interval: 10m, warn_after: 1d, bounce_after: 5d}\n"
    )
    replicas = await _three(text, nats_server)
    services.extend(replicas)
    services.append(await start_delivery(load_config_text(text), nats_server))
    owners = [_partitions(r) for r in replicas]

    async def split() -> bool:
        counts = sorted(len(o.owned()) for o in owners)
        return counts == [5, 5, 6]

    await eventually(split, "the partitions shared")
    # Messages whose partitions belong to each of the three replicas.
    qids = [f"QOP{i}" for i in range(8)]
    by_owner = {i: [q for q in qids if owners[i].owns(q)] for i in range(3)}
    assert all(by_owner.values()), by_owner
    for i, qid in enumerate(qids):
        await receive(js, qid, [f"r{i}@remote.test"])
    for qid in qids:

        def deferred(q: str = qid) -> Awaitable[bool]:
            return positive(count_of(js, q, "DeliveryDeferred"))

        await eventually(deferred, qid)

    url = ["--nats-url", nats_server.url]
    rc, out, err = await mailbus("queue", "list", "--json", *url)
    assert rc == 0, err
    assert sorted(json.loads(line)["queue_id"] for line in out.splitlines()) == qids
    one = {i: by_owner[i][0] for i in range(3)}
    rc, out, err = await mailbus("queue", "show", one[1], *url)
    assert rc == 0 and f"queue id {one[1]}" in out and "deferred" in out, err
    rc, out, err = await mailbus("queue", "hold", one[0], one[1], one[2], *url)
    assert rc == 0, err
    assert out.count("hold: ") == 3
    rc, out, err = await mailbus("queue", "list", "--json", "--state", "held", *url)
    assert sorted(json.loads(line)["queue_id"] for line in out.splitlines()) == sorted(one.values())
    rc, out, err = await mailbus("queue", "release", one[2], *url)
    assert rc == 0 and "release: " in out, err
    rc, out, err = await mailbus("queue", "retry", "ALL", *url)
    assert rc == 0, err
    retried = [line.rsplit(" ", 1)[1] for line in out.splitlines()]
    assert one[0] not in retried and one[1] not in retried  # held: not deferred
    assert {q for q in qids if q not in (one[0], one[1], one[2])} <= set(retried), out
    rc, out, err = await mailbus("queue", "delete", one[0], *url)
    assert rc == 0 and "delete: " in out, err
    await eventually(lambda: _gone(nats_server, one[0]), "deleted")

    # One replica stopped: until the others take its partitions, the listing says which
    # partitions did not answer (and fails); then it covers them all again.
    await replicas[2].close()
    services.remove(replicas[2])
    rc, out, err = await mailbus("queue", "list", "--json", "--timeout", "1", *url)
    if rc != 0:
        assert "no queue replica answered for partition(s)" in err
    await eventually(lambda: _covered(nats_server), "every partition listed again")


async def _gone(server: EmbeddedNats, qid: str) -> bool:
    rc, out, _ = await mailbus("queue", "list", "--json", "--nats-url", server.url)
    return rc == 0 and qid not in out


async def _covered(server: EmbeddedNats) -> bool:
    rc, _, _ = await mailbus("queue", "list", "--nats-url", server.url)
    return rc == 0


def _partitions(running: Running) -> Partitions:
    service = running.service
    assert isinstance(service, QueueService) and service.partitions is not None
    return service.partitions
