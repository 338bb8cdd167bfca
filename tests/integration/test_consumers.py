"""libs/common/runtime/consumers.py on a real nats-server: create-or-update, fetch loop, stop."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.runtime.consumers import DurableConsumer, FetchSettings, bind, fetch_loop

JOBS = DurableConsumer(
    stream=subjects.JOBS_STREAM,
    name="test-jobs",
    description="test",
    filters=(subjects.JOBS_SUBJECTS,),
    ack_wait=30.0,
)


async def test_bind_creates_then_updates(js: JetStreamContext) -> None:
    first = await bind(js, JOBS)
    await first.unsubscribe()
    changed = DurableConsumer(**{**JOBS.__dict__, "ack_wait": 10.0, "max_ack_pending": 7})
    second = await bind(js, changed)
    info = await js.consumer_info(subjects.JOBS_STREAM, "test-jobs")
    assert info.config.ack_wait == 10.0 and info.config.max_ack_pending == 7
    assert info.config.filter_subject == subjects.JOBS_SUBJECTS
    await second.unsubscribe()


async def test_several_filters_go_in_filter_subjects() -> None:
    spec = DurableConsumer("S", "c", "d", ("a.>", "b.>"), ack_wait=1.0)
    config = spec.config()
    assert config.filter_subject is None and config.filter_subjects == ["a.>", "b.>"]


async def _run_loop(js: JetStreamContext, settings: FetchSettings, fail_first: bool) -> list[str]:
    for i in range(3):
        await js.publish(subjects.job_subject(f"d{i}"), f"job {i}".encode())
    sub = await bind(js, JOBS)
    stopping = asyncio.Event()
    seen: list[str] = []

    async def handle(msg: Msg) -> None:
        seen.append(msg.data.decode())
        if fail_first and len(seen) == 1:
            raise RuntimeError("settle failed")  # logged; the loop goes on
        await msg.ack()
        if len(seen) == 3:
            stopping.set()

    await asyncio.wait_for(fetch_loop(sub, handle, stopping, settings, "test"), timeout=10)
    await sub.unsubscribe()
    return seen


async def test_loop_handles_a_batch_together(js: JetStreamContext) -> None:
    seen = await _run_loop(js, FetchSettings(batch=8), fail_first=False)
    assert sorted(seen) == ["job 0", "job 1", "job 2"]


async def test_loop_one_after_the_other_survives_a_failed_handler(js: JetStreamContext) -> None:
    seen = await _run_loop(js, FetchSettings(batch=8, concurrent=False), fail_first=True)
    assert seen == ["job 0", "job 1", "job 2"]


async def test_stop_cancels_an_idle_fetch_when_asked(js: JetStreamContext) -> None:
    sub = await bind(js, JOBS)
    stopping = asyncio.Event()

    async def handle(msg: Msg) -> None:
        await msg.ack()

    # A fetch that waits a minute: the loop ends well before only if the stop cancels it.
    settings = FetchSettings(batch=4, timeout=60.0, cancel_idle_fetch=True)
    task = asyncio.create_task(fetch_loop(sub, handle, stopping, settings, "test"))
    await asyncio.sleep(0.2)  # the loop is now waiting in its fetch
    stopping.set()
    await asyncio.wait_for(task, timeout=10)
    await sub.unsubscribe()


async def _count_pull_requests(js: JetStreamContext, counted: list[int]) -> None:
    async def count(_msg: Msg) -> None:
        counted.append(1)

    nc = js._nc
    await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.JOBS_STREAM}.test-jobs", cb=count)
    await nc.flush()
    await nc.flush()  # nats-py may send its PING ahead of a SUB still buffered


async def test_continuous_pull_asks_once_per_half_window(js: JetStreamContext) -> None:
    # 64 inputs through a window of 16: about 64 / 8 requests, not one (or two) per input
    # as fetch-per-batch made when handlers finish one at a time.
    requests: list[int] = []
    await _count_pull_requests(js, requests)
    for i in range(64):
        await js.publish(subjects.job_subject(f"d{i}"), f"job {i}".encode())
    sub = await bind(js, JOBS)
    stopping = asyncio.Event()
    seen: list[str] = []
    most_in_hand = 0
    in_hand = 0

    async def handle(msg: Msg) -> None:
        nonlocal in_hand, most_in_hand
        in_hand += 1
        most_in_hand = max(most_in_hand, in_hand)
        await asyncio.sleep(0.01 * (len(seen) % 3))  # finish out of order
        seen.append(msg.data.decode())
        await msg.ack()
        in_hand -= 1
        if len(seen) == 64:
            stopping.set()

    settings = FetchSettings(batch=16, timeout=5.0)
    await asyncio.wait_for(fetch_loop(sub, handle, stopping, settings, "test"), timeout=20)
    await sub.unsubscribe()
    assert sorted(seen) == sorted(f"job {i}" for i in range(64))
    assert most_in_hand <= 16
    assert len(requests) <= 64 // 8 + 2, len(requests)


async def test_continuous_pull_hands_over_what_arrives_while_it_waits(
    js: JetStreamContext,
) -> None:
    # An idle consumer: the request waiting on the server delivers a message published
    # later at once, with no new request per message.
    requests: list[int] = []
    await _count_pull_requests(js, requests)
    sub = await bind(js, JOBS)
    stopping = asyncio.Event()
    arrived: list[float] = []
    loop = asyncio.get_running_loop()
    one_more = asyncio.Event()

    async def handle(msg: Msg) -> None:
        arrived.append(loop.time())
        one_more.set()
        await msg.ack()
        if len(arrived) == 5:
            stopping.set()

    settings = FetchSettings(batch=16, timeout=30.0)
    task = asyncio.create_task(fetch_loop(sub, handle, stopping, settings, "test"))
    await asyncio.sleep(0.2)
    for i in range(5):
        one_more.clear()
        sent = loop.time()
        await js.publish(subjects.job_subject("late"), f"late {i}".encode())
        await asyncio.wait_for(one_more.wait(), timeout=5)
        assert arrived[i] - sent < 1.0
    await asyncio.wait_for(task, timeout=10)
    await sub.unsubscribe()
    assert len(requests) == 1


async def test_continuous_pull_stop_gives_back_what_it_did_not_start(
    js: JetStreamContext,
) -> None:
    # Handlers stuck while the stop comes: those in hand finish; the loop returns only
    # then; nothing is left unacked with this consumer for ack_wait (30 s here).
    for i in range(6):
        await js.publish(subjects.job_subject(f"d{i}"), f"job {i}".encode())
    sub = await bind(js, JOBS)
    stopping = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handle(msg: Msg) -> None:
        await release.wait()
        await msg.ack()
        finished.append(msg.data.decode())

    task = asyncio.create_task(
        fetch_loop(sub, handle, stopping, FetchSettings(batch=2, timeout=5.0), "test")
    )
    await asyncio.sleep(0.3)
    stopping.set()
    await asyncio.sleep(0.1)
    assert not task.done()  # two handlers are still in hand
    release.set()
    await asyncio.wait_for(task, timeout=10)
    await sub.unsubscribe()
    assert len(finished) == 2
    for _ in range(50):  # acks are not awaited: give the server a moment
        info = await js.consumer_info(subjects.JOBS_STREAM, "test-jobs")
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.05)
    assert info.num_ack_pending == 0
    assert info.num_pending == 4
