"""Sending a job again only when it was never sent: the guard against redelivered copies.

A job comes back (redelivered by JetStream) when its worker was killed, when the
worker was cut off from NATS for longer than ack_wait while it still had the job
in hand, or when a restarted nats-server lost part of the consumer's delivery
state. Before a redelivered copy is sent, two checks:

- this process is still working on the same job (its results are waiting for NATS):
  wait for that to end instead of opening a second SMTP transaction;
- the job's results are already in the event log (the worker died between
  publishing them and acking): the remote server has the mail, so ack the copy.

A copy handed to a second worker while the first is still sending it (a restarted
server's lost delivery state) is the claims' part (claims.py): the worker finds the
job's claim held and leaves it.

What remains is the SMTP minimum: a worker killed between the remote server's 250
and the results' publish. Only redelivered copies pay for the history read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.js import JetStreamContext

from libs.common.contract.events import DeliveryJob
from libs.common.mail.history import left_queue, message_history
from services.delivery.core import results_recorded


class RedeliveryGuard:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._active: dict[str, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def working_on(self, job: DeliveryJob) -> AsyncIterator[None]:
        """Mark the job as in hand in this process, after any earlier copy is done."""
        while (earlier := self._active.get(job.job_id)) is not None:
            await earlier.wait()
        done = asyncio.Event()
        self._active[job.job_id] = done
        try:
            yield
        finally:
            del self._active[job.job_id]
            done.set()

    async def finished(self, job: DeliveryJob) -> bool:
        """Whether the job's message has left the queue (completed or deleted)."""
        return left_queue(await message_history(self._js, job.queue_id))

    async def recorded(self, job: DeliveryJob) -> bool:
        """Whether every recipient of the job has its result in the event log."""
        found = {e.event_id for e in await message_history(self._js, job.queue_id)}
        return results_recorded(job, found)
