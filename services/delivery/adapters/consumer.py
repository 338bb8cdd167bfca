"""The one durable pull consumer on MAILBUS_JOBS that every delivery worker shares."""

from __future__ import annotations

import os

from libs.common.contract import subjects
from libs.common.runtime.consumers import DurableConsumer

# A job not acked within ack_wait is handed to another worker. It is short so that a
# SIGKILLed worker's jobs (which hold slots of the cluster-wide max_ack_pending) come
# back within seconds; a delivery that is merely slow keeps its job with in_progress()
# every second (services/delivery/adapters/worker.py), so only a worker that stopped
# heartbeating for the whole ack_wait loses its jobs. Tests may change it through the
# environment.
ACK_WAIT_ENV = "MAILBUS_DELIVERY_ACK_WAIT"
DEFAULT_ACK_WAIT_S = 8.0


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


def jobs_consumer(max_ack_pending: int, ack_wait: float) -> DurableConsumer:
    return DurableConsumer(
        stream=subjects.JOBS_STREAM,
        name=subjects.DELIVERY_CONSUMER,
        description="delivery workers: outbound SMTP jobs",
        filters=(subjects.JOBS_SUBJECTS,),
        ack_wait=ack_wait,
        # The server hands out at most this many unacked jobs across all workers:
        # that is what makes delivery.max_delivery_threads a cluster-wide cap. The last
        # worker to start sets the shared limits.
        max_ack_pending=max_ack_pending,
    )
