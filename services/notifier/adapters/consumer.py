"""The notifier's durable pull consumer: the four report-triggering event types."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from libs.common import subjects
from services.notifier.core import TRIGGER_TYPES

log = logging.getLogger(__name__)

FETCH_BATCH = 16
FETCH_TIMEOUT_S = 1.0  # also the longest a stop() waits for an idle fetch
ACK_WAIT_S = 60.0  # a report reads a body and writes one: allow a slow store
MAX_ACK_PENDING = 256


def consumer_config() -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=subjects.NOTIFIER_CONSUMER,
        durable_name=subjects.NOTIFIER_CONSUMER,
        description="notifier: failures, delays, expiries and requested successes",
        filter_subjects=[subjects.events_of_type(t) for t in TRIGGER_TYPES],
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=MAX_ACK_PENDING,
    )


async def subscribe(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    # Create-or-update, so a changed filter in a new version takes effect at start.
    await js.add_consumer(subjects.EVENTS_STREAM, consumer_config())
    return await js.pull_subscribe_bind(
        durable=subjects.NOTIFIER_CONSUMER, stream=subjects.EVENTS_STREAM
    )


async def fetch_loop(
    sub: JetStreamContext.PullSubscription,
    handle: Callable[[Msg], Awaitable[None]],
    stopping: asyncio.Event,
) -> None:
    """Fetch, handle the batch, repeat; a stop lets the batch in hand finish first."""
    while not stopping.is_set():
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nats.errors.TimeoutError included: nothing to fetch
            continue
        except Exception as exc:  # NATS reconnecting, consumer being recreated, ...
            if stopping.is_set():
                break
            log.warning("notifier: fetch failed: %s", exc)
            await asyncio.sleep(FETCH_TIMEOUT_S)
            continue
        settled = await asyncio.gather(*(handle(m) for m in msgs), return_exceptions=True)
        for outcome in settled:
            # Only an ack or nak that could not reach NATS gets here: redelivery covers it.
            if isinstance(outcome, Exception):
                log.warning("notifier: trigger not settled: %s", outcome)
