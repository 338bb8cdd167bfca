"""The one durable pull consumer on MAILBUS_JOBS that every delivery worker shares."""

from __future__ import annotations

import os

from nats.js import JetStreamContext, api

from libs.common import subjects

# A job not acked within ack_wait is handed to another worker. Long deliveries keep
# their job with in_progress() every third of it. Tests shorten it through the
# environment so a crashed worker's job comes back quickly.
ACK_WAIT_ENV = "MAILBUS_DELIVERY_ACK_WAIT"
DEFAULT_ACK_WAIT_S = 60.0


def ack_wait_from_env() -> float:
    raw = os.environ.get(ACK_WAIT_ENV, "")
    if not raw:
        return DEFAULT_ACK_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ACK_WAIT_ENV}={raw!r}: not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{ACK_WAIT_ENV}={raw!r}: must be positive")
    return value


def consumer_config(max_ack_pending: int, ack_wait: float) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=subjects.DELIVERY_CONSUMER,
        durable_name=subjects.DELIVERY_CONSUMER,
        description="delivery workers: outbound SMTP jobs",
        filter_subjects=[subjects.JOBS_SUBJECTS],
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        # The server hands out at most this many unacked jobs across all workers:
        # that is what makes delivery.max_delivery_threads a cluster-wide cap.
        max_ack_pending=max_ack_pending,
    )


async def subscribe(
    js: JetStreamContext, max_ack_pending: int, ack_wait: float
) -> JetStreamContext.PullSubscription:
    # Create-or-update: the last worker to start sets the shared limits.
    await js.add_consumer(subjects.JOBS_STREAM, consumer_config(max_ack_pending, ack_wait))
    return await js.pull_subscribe_bind(
        durable=subjects.DELIVERY_CONSUMER, stream=subjects.JOBS_STREAM
    )
