"""Durable timers on JetStream message schedules (nats-server 2.12+, ADR-51).

What the server does, as checked against 2.15 (tests/integration/test_queue_timers.py
relies on it):

- a message on `mailbus.timer.sched.<qid>.<kind>` with the headers
  `Nats-Schedule: @at <RFC 3339 UTC>` and `Nats-Schedule-Target: <subject>` is a
  schedule; one per subject (publishing again replaces it), kept on disk;
- when due (at once if the time is past) the server publishes the payload and
  our own headers to the target inside the same stream, adds `Nats-Scheduler`
  and `Nats-Schedule-Next: purge`, and removes the schedule;
- the fired message stays in MAILBUS_TIMERS (one per subject) until we purge
  the message's timers when it leaves the queue.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.runtime.consumers import DurableConsumer
from services.queue.core import SetTimer, TimerFired

log = logging.getLogger(__name__)

SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"
MSG_ID = "Nats-Msg-Id"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schedule_msg_id(timer: SetTimer) -> str:
    # The same timer set again (a redelivered input) is deduplicated; a moved timer
    # has a new due time, hence a new id, and replaces the old schedule.
    return f"{timer.queue_id}.{timer.kind}.{rfc3339(timer.due)}"


async def set_timer(js: JetStreamContext, timer: SetTimer) -> None:
    headers = {
        SCHEDULE: f"@at {rfc3339(timer.due)}",
        SCHEDULE_TARGET: subjects.timer_fire_subject(timer.queue_id, timer.kind),
        MSG_ID: schedule_msg_id(timer),
    }
    subject = subjects.timer_schedule_subject(timer.queue_id, timer.kind)
    await js.publish(subject, timer.fire.model_dump_json().encode(), headers=headers)


async def fire_now(js: JetStreamContext, fire: TimerFired) -> None:
    """An operator's `retry`: a schedule due at once (it replaces the pending retry
    timer, which the round it starts will set again if need be)."""
    headers = {
        SCHEDULE: f"@at {rfc3339(fire.due)}",
        SCHEDULE_TARGET: subjects.timer_fire_subject(fire.queue_id, fire.kind),
        MSG_ID: fire.request_id or f"{fire.queue_id}.{fire.kind}.{rfc3339(fire.due)}",
    }
    subject = subjects.timer_schedule_subject(fire.queue_id, fire.kind)
    await js.publish(subject, fire.model_dump_json().encode(), headers=headers)


async def clear_timers(js: JetStreamContext, queue_id: str) -> None:
    await js.purge_stream(subjects.TIMERS_STREAM, subject=subjects.message_timers_filter(queue_id))


def timers_consumer(partition: int) -> DurableConsumer:
    return DurableConsumer(
        stream=subjects.TIMERS_STREAM,
        name=subjects.queue_timers_consumer(partition),
        description=f"queue: fired retry, delay-warning and expiry timers (partition {partition})",
        filters=(subjects.timer_fires_of(partition),),
        ack_wait=8.0,  # as the events consumers': a killed queue's timers come back soon
        max_ack_pending=1_000,
    )


# Timers scheduled before partitions fire on the old shape (`fire.<qid>.<kind>`): the
# consumer of that version, its filter narrowed to that shape so it never sees a new one.
LEGACY_TIMERS_CONSUMER = DurableConsumer(
    stream=subjects.TIMERS_STREAM,
    name=subjects.QUEUE_TIMERS_CONSUMER,
    description="queue: fired timers scheduled before partitions",
    filters=(subjects.LEGACY_TIMER_FIRES,),
    ack_wait=8.0,
    max_ack_pending=1_000,
)
