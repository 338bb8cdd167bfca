"""Recovery without a manual step: processes SIGKILLed (and nats-server restarted) under work.

Each test kills a real process — nats-server, a delivery worker, the queue — and
measures how soon the system works again on its own. The services run as child
processes (tests/support/procs.py); the sinks are aiosmtpd servers on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import JetStreamContext, api

from libs.common.config import load_config_text
from libs.common.contract import subjects
from libs.common.contract.events import DeliveryFailed
from libs.common.mail.bodies import BodyStore
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats, free_port
from libs.common.runtime.lease import slot_of
from libs.common.runtime.service import Running, start_service
from services.delivery.adapters.consumer import DEFAULT_ACK_WAIT_S, jobs_consumer
from services.delivery.service import DeliveryService
from tests.support import queue
from tests.support.procs import processes
from tests.support.queue import receive, start_queue
from tests.support.sink import Sink
from tests.support.streams import body_exists, completed, count_of, eventually, jobs_waiting

services = queue.services  # a shared fixture


def front_door_config(smtp_port: int) -> str:
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
listeners:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:{smtp_port}", tls: none}}
security: {{require_sender_domain_dns: false, max_connections_per_ip: 20}}
antispam: {{spf: false}}
"""


def relay_config(sink_port: int, threads: int) -> str:
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink_port}}}
  tls: none
  max_delivery_threads: {threads}
  connect_timeout: 5s
"""


async def greeting(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            line = await reader.readline()
        return line.decode(errors="replace").strip()
    finally:
        writer.close()


async def greeted_within(port: int, within: float) -> float:
    """Seconds until a new connection is greeted with 220 (not 421)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < within:
        try:
            last = await greeting(port)
        except OSError as exc:
            last = repr(exc)
        if last.startswith("220"):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"no 220 within {within} s; last: {last}")


# --- finding 1: connection limits after a nats-server restart --------------------------------


async def test_connections_limit_works_again_after_nats_restarts(tmp_path: Path) -> None:
    """A standalone nats-server SIGKILLed, then stopped cleanly, and started again each time:
    new connections are greeted again within seconds, with no service restarted."""
    server = EmbeddedNats(data_dir=tmp_path / "nats", log_file=tmp_path / "nats.log")
    server.start()
    smtp_port = free_port()
    try:
        async with processes(tmp_path, front_door_config(smtp_port), server.url) as procs:
            await (await procs.start("policy")).ready()
            await (await procs.start("ingress")).ready()
            assert (await greeting(smtp_port)).startswith("220")
            for restart in (server.kill, server.stop):
                restart()
                await server.astart()
                took = await greeted_within(smtp_port, within=15)
                print(
                    f"greeted again {took:.1f} s after nats-server came back ({restart.__name__})"
                )
    finally:
        server.stop()


# --- finding 2: a SIGKILLed delivery worker's jobs come back within seconds -------------------


async def test_killed_workers_jobs_come_back_within_seconds(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
    tmp_path: Path,
) -> None:
    """Worker A holds every slot of the cluster-wide cap when it is SIGKILLed; worker B
    (default ack_wait) delivers everything soon after, not after a minute."""
    sink, port = sink_factory(data_delay=1.0)
    text = relay_config(port, threads=2)
    config = load_config_text(text)
    services.append(await start_queue(config, nats_server))
    qids = [f"QKILL{i}" for i in range(6)]
    async with processes(tmp_path, text, nats_server.url) as procs:
        worker_a = await procs.start("delivery")
        await worker_a.ready()
        for qid in qids:
            await receive(js, qid, [f"{qid.lower()}@remote.test"])

        async def in_data() -> bool:
            return sink.in_data > 0

        await eventually(in_data, "worker A delivering")
        await worker_a.kill()
        killed_at = time.monotonic()
        services.append(await start_service("delivery", DeliveryService, config, [nats_server.url]))

        async def all_completed() -> bool:
            return all([await _completed(js, q) for q in qids])

        await eventually(all_completed, "every message completed", within=40)
        took = time.monotonic() - killed_at
    print(f"all delivered {took:.1f} s after the kill (ack_wait {DEFAULT_ACK_WAIT_S:g} s)")
    assert took < DEFAULT_ACK_WAIT_S + 8
    assert {r[0] for _, r, _ in sink.received} == {f"{q.lower()}@remote.test" for q in qids}


async def test_a_slow_delivery_keeps_its_job(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    """A remote server slower than ack_wait: the in-progress heartbeats keep the job, so it
    is delivered once, not handed to a second worker."""
    sink, port = sink_factory(data_delay=DEFAULT_ACK_WAIT_S + 3)
    config = load_config_text(relay_config(port, threads=2))
    services.append(await start_queue(config, nats_server))
    for _ in range(2):
        services.append(await start_service("delivery", DeliveryService, config, [nats_server.url]))
    await receive(js, "QSLOW", ["slow@remote.test"])
    await eventually(
        lambda: _completed(js, "QSLOW"),
        "the slow message completed",
        within=DEFAULT_ACK_WAIT_S + 20,
    )
    await asyncio.sleep(1.0)
    assert len(sink.received) == 1
    assert sink.sessions == 1


async def _completed(js: JetStreamContext, qid: str) -> bool:
    """Every recipient final, and the queue has seen it (it deleted the body)."""
    return await completed(js, qid) and not await body_exists(js, qid)


# --- finding 3: a queue restarted in its slot takes its lease over at once ---------------------


async def test_queue_restarted_in_its_slot_takes_over_at_once(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    text = "server: {hostname: mx.example.test}\n"
    slot = {"MAILBUS_SLOT": "pod-queue-0"}
    async with processes(tmp_path, text, nats_server.url) as procs:
        first = await procs.start("queue", env=slot)
        await first.ready()
        await first.kill()  # the lease stays behind, held by a dead process
        successor = await procs.start("queue", env=slot)
        took = await successor.ready()
        print(f"successor in the same slot ready after {took:.1f} s")
        assert took < 4.0, successor.tail()
        # Another slot shares the partitions with the successor...
        other = await procs.start("queue", env={"MAILBUS_SLOT": "pod-queue-1"})
        await other.ready(within=20)
        half = subjects.QUEUE_PARTITIONS // 2
        await eventually(
            lambda: _slots_own(js, {"pod-queue-0": half, "pod-queue-1": half}), "shared"
        )
        # ...and, the successor SIGKILLed without a word, takes its partitions over once
        # their leases expire by their (short) TTL.
        await successor.kill()
        killed = asyncio.get_running_loop().time()
        everything = {"pod-queue-1": subjects.QUEUE_PARTITIONS}
        await eventually(lambda: _slots_own(js, everything), "taken over", within=30)
        took = asyncio.get_running_loop().time() - killed
        print(f"the other slot owned every partition {took:.1f} s after the kill")


async def _slots_own(js: JetStreamContext, wanted: dict[str, int]) -> bool:
    """Whether the partitions' leases are held by these slots, so many each."""
    kv = await js.key_value(subjects.QUEUE_LEADER_BUCKET)
    counts: dict[str, int] = {}
    for p in range(subjects.QUEUE_PARTITIONS):
        try:
            entry = await kv.get(subjects.queue_partition_key(p))
        except Exception:
            return False
        slot = slot_of(entry.value or b"") or "?"
        counts[slot] = counts.get(slot, 0) + 1
    return counts == wanted


async def test_a_memory_connections_bucket_is_moved_to_file(js: JetStreamContext) -> None:
    """As an older version left it: in memory, gone with a standalone server's restart."""
    await js.delete_key_value(subjects.CONNECTIONS_BUCKET)
    await js.create_key_value(
        api.KeyValueConfig(
            bucket=subjects.CONNECTIONS_BUCKET, storage=api.StorageType.MEMORY, history=1
        )
    )
    await bus.ensure_topology(js)
    info = await js.stream_info(subjects.kv_stream(subjects.CONNECTIONS_BUCKET))
    assert info.config.storage == api.StorageType.FILE


# --- duplicate mechanism 2: results published while NATS is away --------------------------------


async def test_results_wait_for_nats_instead_of_sending_again(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
    tmp_path: Path,
) -> None:
    """nats-server dies while the remote server is in DATA and comes back after its 250:
    the worker publishes the result once NATS is back, under the same id, and acks the job;
    the mail is not sent a second time."""
    sink, port = sink_factory(data_delay=2.0)
    text = relay_config(port, threads=2)
    config = load_config_text(text)
    services.append(await start_service("delivery", DeliveryService, config, [nats_server.url]))
    slot = {"MAILBUS_SLOT": "test-queue"}
    async with processes(tmp_path, text, nats_server.url) as procs:
        # A child process: cut off longer than its lease's TTL it exits, as it must, and
        # is started again in its slot, as a supervisor does.
        queue_proc = await procs.start("queue", env=slot)
        await queue_proc.ready()
        await receive(js, "QAWAY", ["away@remote.test"])

        async def in_data() -> bool:
            return sink.in_data > 0

        async def accepted() -> bool:
            return len(sink.received) == 1

        async def completed_with_a_queue() -> bool:
            nonlocal queue_proc
            if queue_proc.proc.returncode is not None:
                queue_proc = await procs.start("queue", env=slot)
            return await _completed(js, "QAWAY")

        await eventually(in_data, "the delivery in DATA")
        nats_server.kill()
        await eventually(accepted, "the remote 250")
        await asyncio.sleep(7.0)  # longer than a JetStream publish waits (5 s): it fails
        await nats_server.astart()
        await eventually(completed_with_a_queue, "completion", within=40)
        await asyncio.sleep(DEFAULT_ACK_WAIT_S + 2)  # a nak'ed or unacked job is back by now
    assert len(sink.received) == 1
    assert await count_of(js, "QAWAY", "DeliverySucceeded") == 1


# --- finding 5: orphan bodies are swept after a grace period and counted ------------------------


async def test_orphan_bodies_are_swept_after_the_grace_period(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    """What an ingress killed between storing a body and publishing its MessageReceived
    leaves behind: a body no event refers to. The queue removes it once it is older than
    the grace period, keeps the bodies of known messages, and counts what it removed."""
    store = BodyStore(js)
    await store.put("QORPHAN1", b"left by a killed ingress\r\n")
    await receive(js, "QKNOWN", ["known@remote.test"])  # a live message, never delivered here
    env = {"MAILBUS_ORPHAN_SWEEP_EVERY": "0.5", "MAILBUS_ORPHAN_GRACE": "3"}
    async with processes(tmp_path, "server: {hostname: mx.example.test}\n", nats_server.url) as p:
        queue_proc = await p.start("queue", env=env)
        await queue_proc.ready()
        await store.put("QORPHAN2", b"a younger orphan\r\n")
        await asyncio.sleep(1.5)
        assert await body_exists(js, "QORPHAN2")  # inside its grace period
        await eventually(lambda: _not(body_exists(js, "QORPHAN1")), "the old orphan gone", 10)
        await eventually(lambda: _not(body_exists(js, "QORPHAN2")), "the young one gone", 10)
        assert await body_exists(js, "QKNOWN")
        assert await asyncio.to_thread(queue_proc.metric, ORPHANS_METRIC) == 2


ORPHANS_METRIC = "mailbus_qmgr_orphan_bodies_removed_total"


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


# --- fencing: a deposed queue's writes are refused by the server ---------------------------------


async def test_a_deposed_queue_cannot_write(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    """A successor's epoch marker lands on a partition while its old holder still runs (it
    has not yet noticed that it lost the lease): the old holder's next decision for that
    partition that writes an event is refused by the server, nothing of it reaches the
    log, and it gives the partition up. Here no successor holds the lease, so once it
    expires the same replica takes the partition again under an epoch of its own, and
    decides. A new message's decision writes no event (its first attempt's jobs follow
    from MessageReceived alone, the same jobs by id whoever decides them), so the
    decision here is a failure's report."""
    qid = "QFENCE"
    async with processes(tmp_path, "server: {hostname: mx.example.test}\n", nats_server.url) as p:
        old = await p.start("queue")
        await old.ready()
        await js.publish(subjects.queue_epoch_subject(subjects.partition_of(qid)), b"successor")
        await receive(js, qid, ["fenced@remote.test"])
        await eventually(lambda: _equals(jobs_waiting(js), 1), "the first attempt's job")
        failed = DeliveryFailed(
            event_id=f"{qid}.a1.d0.r0",
            queue_id=qid,
            job_id=f"{qid}.a1.d0",
            attempt=1,
            recipient="fenced@remote.test",
            reply_code=550,
            status="5.1.1",
        )
        await bus.publish_event(js, failed)

        async def fenced() -> bool:
            return "write fenced off" in old.tail(1000)

        await eventually(fenced, "the write fenced off", within=15)
        assert await count_of(js, qid, "RecipientsFailed") == 0
        await eventually(lambda: _equals(count_of(js, qid, "RecipientsFailed"), 1), "retaken", 30)
        assert old.proc.returncode is None  # one partition lost is no reason to stop


# --- a body not found (a replica still catching up) is looked for again --------------------------


async def test_a_body_not_found_for_an_unfinished_message_is_looked_for_again(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    """As a lagging R3 replica answers a direct get right after a node restart (seen in the
    chaos run: the job was dropped and its message stuck for good): the body reads as
    missing while the message is not done. The job is tried again, not dropped."""
    sink, port = sink_factory()
    config = load_config_text(relay_config(port, threads=2))
    queue_service = await start_queue(config, nats_server)
    services.append(queue_service)
    await receive(js, "QLAG", ["lag@remote.test"])
    await eventually(lambda: _equals(jobs_waiting(js), 1), "the job")
    store = BodyStore(js)
    body = await store.get("QLAG")
    assert body is not None
    await store.delete("QLAG")
    services.append(await start_service("delivery", DeliveryService, config, [nats_server.url]))
    await asyncio.sleep(1.5)  # the worker found no body, and did not drop the job
    assert sink.received == [] and await jobs_waiting(js) == 1
    await store.put("QLAG", body)
    await eventually(lambda: _completed(js, "QLAG"), "delivered once the body is there", 20)
    assert len(sink.received) == 1


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# --- duplicate mechanism 3: one job handed to two workers at once -------------------------------


async def test_a_job_handed_to_two_workers_at_once_is_sent_once(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    """As after a nats-server SIGKILL that lost part of the consumer's delivery state:
    worker A is in the middle of sending a job when the consumer forgets it (deleted and
    made again, as a restarted server that lost its state) and hands it to worker B.
    B finds A's claim and leaves the job to it: one copy at the remote server (without
    the claim, B sends a second one while A is still in DATA)."""
    sink, port = sink_factory(data_delay=3.0)
    config = load_config_text(relay_config(port, threads=1))
    services.append(await start_queue(config, nats_server))
    workers = [
        await start_service("delivery", DeliveryService, config, [nats_server.url])
        for _ in range(2)
    ]
    services.extend(workers)
    await receive(js, "QTWICE", ["twice@remote.test"])

    async def in_data() -> bool:
        return sink.in_data > 0

    await eventually(in_data, "a worker in DATA")
    consumer = jobs_consumer(1, DEFAULT_ACK_WAIT_S)
    await js.delete_consumer(consumer.stream, consumer.name)
    await js.add_consumer(consumer.stream, consumer.config())

    async def handed_out_again() -> bool:
        info = await js.consumer_info(consumer.stream, consumer.name)
        return bool(info.delivered.stream_seq)

    await eventually(handed_out_again, "the job handed out by the new consumer")
    await eventually(lambda: _completed(js, "QTWICE"), "the message completed", within=30)
    await asyncio.sleep(3.5)  # as long as a second DATA would take
    assert len(sink.received) == 1
    assert sink.sessions == 1
