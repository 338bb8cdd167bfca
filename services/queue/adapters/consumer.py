"""The queue's durable pull consumer on MAILBUS_EVENTS and its fetch loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from libs.common import subjects

log = logging.getLogger(__name__)

# The inputs of the queue: a new message, the delivery results, the notifier's answers
# and the operator's commands. What the queue publishes itself is not read back.
INPUT_TYPES = (
    "MessageReceived",
    "DeliverySucceeded",
    "DeliveryDeferred",
    "DeliveryFailed",
    "ReportSent",
    "MessageHeld",
    "MessageReleased",
    "MessageDeleted",
)

FETCH_BATCH = 64
FETCH_TIMEOUT_S = 1.0  # also the longest a stop() waits for an idle fetch
ACK_WAIT_S = 30.0
MAX_ACK_PENDING = 1_000


def consumer_config() -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=subjects.QUEUE_CONSUMER,
        durable_name=subjects.QUEUE_CONSUMER,
        description="queue: new messages, delivery results, report answers, operator commands",
        filter_subjects=[subjects.events_of_type(t) for t in INPUT_TYPES],
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=MAX_ACK_PENDING,
    )


async def subscribe(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    # Create-or-update: a changed filter or limit in a new version takes effect at start.
    await js.add_consumer(subjects.EVENTS_STREAM, consumer_config())
    return await js.pull_subscribe_bind(
        durable=subjects.QUEUE_CONSUMER, stream=subjects.EVENTS_STREAM
    )


async def fetch_loop(
    sub: JetStreamContext.PullSubscription,
    handle: Callable[[Msg], Awaitable[None]],
    stopping: asyncio.Event,
    what: str = "queue",
) -> None:
    """Fetch a batch, handle it (handlers serialize per queue id), repeat until stopped.

    A batch finishes before the next fetch, so a stop never abandons work in flight.
    """
    while not stopping.is_set():
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nats.errors.TimeoutError included: nothing to fetch
            continue
        except Exception as exc:  # NATS reconnecting, consumer being recreated, ...
            if stopping.is_set():
                break
            log.warning("%s: fetch failed: %s", what, exc)
            await asyncio.sleep(FETCH_TIMEOUT_S)
            continue
        outcomes = await asyncio.gather(*(handle(m) for m in msgs), return_exceptions=True)
        for outcome in outcomes:
            # Only an ack or nak that could not reach NATS gets here: redelivery covers it.
            if isinstance(outcome, Exception):
                log.warning("%s: input not settled: %s", what, outcome)
