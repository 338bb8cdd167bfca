"""Reading the event log, the bodies stream and the job stream from tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.common.contract import subjects
from libs.common.contract.events import (
    AnyEvent,
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliverySucceeded,
)
from libs.common.mail.bodies import BodyStore
from libs.common.mail.history import message_history
from services.queue.core import fold


async def history(js: JetStreamContext, qid: str) -> list[AnyEvent]:
    """The message's events, a job's results (one DeliveryAttempted) read as the
    per-recipient events they stand for, so tests look at recipients either way. The
    stored form itself: `stored`."""
    found: list[AnyEvent] = []
    for event in await stored(js, qid):
        found.extend(event.per_recipient() if isinstance(event, DeliveryAttempted) else [event])
    return found


async def stored(js: JetStreamContext, qid: str) -> list[AnyEvent]:
    return await message_history(js, qid)


def types(events: list[AnyEvent]) -> list[str]:
    return [e.type for e in events]


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def count_of(js: JetStreamContext, qid: str, event_type: str) -> int:
    return types(await history(js, qid)).count(event_type)


async def completed(js: JetStreamContext, qid: str) -> bool:
    """Every recipient final, as the queue's fold of the log says (no event marks it).
    The queue's own part, once it saw that, is deleting the body."""
    return fold(await history(js, qid)).completed


async def body_exists(js: JetStreamContext, qid: str) -> bool:
    return await BodyStore(js).get(qid) is not None


async def jobs_waiting(js: JetStreamContext) -> int:
    info = await js.stream_info(subjects.JOBS_STREAM)
    return info.state.messages


RESULTS = ("DeliverySucceeded", "DeliveryDeferred", "DeliveryFailed")
DeliveryResult = DeliverySucceeded | DeliveryDeferred | DeliveryFailed


async def results_by_recipient(js: JetStreamContext, qid: str) -> dict[str, DeliveryResult]:
    return {
        e.recipient: e
        for e in await history(js, qid)
        if isinstance(e, DeliverySucceeded | DeliveryDeferred | DeliveryFailed)
    }


async def results_count(js: JetStreamContext, qid: str) -> int:
    return sum(t in RESULTS for t in types(await history(js, qid)))


async def timers_of(js: JetStreamContext, qid: str) -> int:
    """Schedules and fired timers the message still has in MAILBUS_TIMERS."""
    info = await js.stream_info(
        subjects.TIMERS_STREAM, subjects_filter=subjects.message_timers_filter(qid)
    )
    return sum((info.state.subjects or {}).values())


async def event_consumers_idle(js: JetStreamContext) -> bool:
    """Whether the queue's consumers of MAILBUS_EVENTS (one per partition, and the one of
    the versions before partitions) and the notifier's have nothing waiting or unacked."""
    names = [c for st, c in subjects.SERVICE_CONSUMERS["queue"] if st == subjects.EVENTS_STREAM]
    for consumer in [*names, subjects.NOTIFIER_CONSUMER]:
        try:
            info = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
        except NotFoundError:  # a partition's consumer not made yet: nothing for it
            continue
        if info.num_pending or info.num_ack_pending:
            return False
    return True
