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
