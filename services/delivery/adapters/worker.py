"""A delivery worker: fetch jobs, deliver them, publish results, then ack.

Test-only fault point: when the environment variable MAILBUS_FAULT equals
`delivery.exit_before_ack`, the process calls `os._exit(137)` after a job's
results are acknowledged by JetStream and before the job itself is acked. The
crash test uses it to show that such a job is delivered again (at least once)
and that the message still completes exactly once. Never set it in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from opentelemetry import trace
from pydantic import ValidationError

from libs.common import bus
from libs.common.events import DeliveryJob
from libs.common.telemetry import context_from_headers, tracer
from services.delivery.adapters.local_store import LocalDelivery
from services.delivery.adapters.smtp_client import Attempt, RelayTarget, deliver
from services.delivery.core import Transcript, replies_for, result_events, unsupported

log = logging.getLogger(__name__)
_tracer = tracer("mailbus.delivery")

FAULT_ENV = "MAILBUS_FAULT"
FAULT_EXIT_BEFORE_ACK = "delivery.exit_before_ack"

FETCH_TIMEOUT_S = 1.0  # also the longest a stop() waits for an idle fetch
RETRY_DELAY_S = 5.0


@dataclass(frozen=True)
class WorkerSettings:
    relay: RelayTarget
    slots: int  # deliveries this process runs at once
    ack_wait: float
    instance: str


class DeliveryWorker:
    def __init__(
        self,
        js: JetStreamContext,
        bodies: ObjectStore,
        settings: WorkerSettings,
        fault: str | None = None,
        local: LocalDelivery | None = None,
    ) -> None:
        self._js = js
        self._local = local
        self._bodies = bodies
        self._settings = settings
        self._fault = fault if fault is not None else os.environ.get(FAULT_ENV, "")
        self._slots = asyncio.Semaphore(settings.slots)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, sub: JetStreamContext.PullSubscription, stopping: asyncio.Event) -> None:
        """Fetch only when a slot is free, so this worker never sits on jobs it cannot start."""
        while not stopping.is_set():
            await self._slots.acquire()
            if stopping.is_set():
                self._slots.release()
                break
            try:
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                msgs = []
            except Exception as exc:  # NATS reconnecting and the like
                log.warning("delivery: fetch failed: %s", exc)
                msgs = []
                await asyncio.sleep(FETCH_TIMEOUT_S)
            if not msgs:
                self._slots.release()
                continue
            for extra in msgs[1:]:  # fetch(1) returns one; be safe if it ever does not
                await extra.nak()
            task = asyncio.create_task(self._job(msgs[0]), name="delivery-job")
            self._in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def drain(self) -> None:
        """Wait for the jobs already started; called once fetching has stopped."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _job(self, msg: Msg) -> None:
        try:
            job = DeliveryJob.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("delivery: dropping unreadable job on %s: %s", msg.subject, exc)
            await msg.term()
            return
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await self._attempt(job, msg)
        except Exception:
            log.exception("delivery %s: job %s failed; retrying", job.queue_id, job.job_id)
            # If even the nak cannot reach NATS, ack_wait brings the job back anyway.
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY_S)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(self._settings.ack_wait / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _attempt(self, job: DeliveryJob, msg: Msg) -> None:
        relay = self._settings.relay
        with _tracer.start_as_current_span(
            "smtp deliver",
            context=context_from_headers(msg.headers),
            kind=trace.SpanKind.CLIENT,
            attributes={
                "mailbus.queue_id": job.queue_id,
                "mailbus.job_id": job.job_id,
                "mailbus.attempt": job.attempt,
                "mailbus.destination": job.destination.key,
                "smtp.recipients": len(job.recipients),
            },
        ) as span:
            stand_in = unsupported(job.destination)
            local = self._local if job.destination.kind == "local" else None
            local_replies = None
            if stand_in is not None and local is None:
                attempt = Attempt(Transcript(broken=stand_in))
                remote_host = ""
            else:
                body = await self._body(job.queue_id)
                if body is None:
                    # The queue deletes a body only once the message is complete: this
                    # job is a late copy of work already finished.
                    log.info("delivery %s: body gone, job %s dropped", job.queue_id, job.job_id)
                    span.set_attribute("mailbus.body_missing", True)
                    await msg.term()
                    return
                if local is not None:
                    attempt, remote_host = Attempt(Transcript()), local.remote_host
                    local_replies = await local.deliver(job, body)
                else:
                    remote_host = relay.host
                    span.set_attribute("server.address", relay.host)
                    span.set_attribute("server.port", relay.port)
                    attempt = await deliver(
                        relay, job.mail_from, [r.address for r in job.recipients], body, job.size
                    )
            replies = local_replies or replies_for(attempt.transcript, len(job.recipients))
            events = result_events(
                job,
                replies,
                remote_host=remote_host,
                tls_version=attempt.tls_version,
                worker=self._settings.instance,
                now=datetime.now(UTC),
            )
            _annotate(span, attempt, [r.code for r in replies])
            # Every result must be durable before the job is acked (then it cannot vanish).
            await asyncio.gather(*(bus.publish_event(self._js, e) for e in events))
        if self._fault == FAULT_EXIT_BEFORE_ACK:
            log.warning("delivery: fault %s: exiting before ack of %s", self._fault, job.job_id)
            os._exit(137)
        await msg.ack()

    async def _body(self, queue_id: str) -> bytes | None:
        try:
            result = await self._bodies.get(queue_id)
        except NotFoundError:
            return None
        data = result.data
        return data if isinstance(data, bytes) else b""


def _annotate(span: trace.Span, attempt: Attempt, codes: list[int]) -> None:
    transcript = attempt.transcript
    last = transcript.data or transcript.broken or transcript.mail
    if last is not None:
        span.set_attribute("smtp.reply_code", last.code)
        span.set_attribute("smtp.status", last.enhanced_status)
    span.set_attribute("smtp.reply_codes", codes)
    if attempt.tls_version:
        span.set_attribute("tls.protocol.version", attempt.tls_version)
    if transcript.broken is not None:
        span.set_status(trace.StatusCode.ERROR, transcript.broken.text)
