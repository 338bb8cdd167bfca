"""A delivery worker: fetch jobs, deliver them, publish results, then ack.

Jobs fetched together that go to the same destination are delivered one after
the other over one SMTP session (several MAIL transactions), so a burst to one
domain or to the relay host does not open a connection per message. Each job
holds one of the worker's slots until it is acked, and the shared consumer's
max_ack_pending caps unacked jobs over all workers; since a session only ever
serves jobs that are unacked, sessions never outnumber max_delivery_threads.

Test-only fault point: when the environment variable MAILBUS_FAULT equals
`delivery.exit_before_ack`, the process calls `os._exit(137)` after a job's
results are acknowledged by JetStream and before the job itself is acked. The
crash test uses it to show that such a job, redelivered, is acked without being
sent again (its results are in the log) and that the message completes exactly
once. Never set it in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from pydantic import ValidationError

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryJob,
    DeliveryTimings,
    Event,
    event_type,
)
from libs.common.mail.bodies import BodyStore
from libs.common.runtime import bus
from libs.common.runtime.metrics import DELIVERY_ATTEMPTS, DELIVERY_SECONDS
from libs.common.runtime.telemetry import context_from_headers, messaging_attributes, tracer
from services.delivery.adapters.claims import Claim, JobClaims
from services.delivery.adapters.courier import Attempt, Courier
from services.delivery.adapters.local_store import LocalDelivery
from services.delivery.adapters.redelivery import RedeliveryGuard
from services.delivery.adapters.smtp_client import SmtpSession
from services.delivery.core import Transcript, replies_for, result_events, unsupported
from services.delivery.core.mx import NoRoute, Route

log = logging.getLogger(__name__)
_tracer = tracer("mailbus.delivery")

FAULT_ENV = "MAILBUS_FAULT"
FAULT_EXIT_BEFORE_ACK = "delivery.exit_before_ack"

FETCH_TIMEOUT_S = 1.0  # also the longest a stop() waits for an idle fetch
RETRY_DELAY_S = 5.0
# A job in hand is reported in progress this often (at most; a quarter of ack_wait when
# that is shorter): a delivery loses its job only if the process stalls for ack_wait.
HEARTBEAT_S = 1.0
# Once the remote server has answered, the results are published until JetStream takes
# them (NATS restarting, a leader election): nak'ing the job instead would send the mail
# again. Each try reuses the results' ids, so one that was stored but not acknowledged
# is dropped as a duplicate. Past this bound the job is nak'ed (and sent again).
RESULT_PUBLISH_LIMIT_S = 300.0
RESULT_RETRY_MAX_S = 2.0
# A body missing for a message that is not done is looked for this many times (a
# lagging replica catches up within seconds) before the job is dropped as unservable.
BODY_MISSING_TRIES = 12
# A job another worker is sending is asked for again after 1, 2, ... s, at most this:
# soon after a short delivery, and at most this long after a dead holder's claim expired.
CLAIM_RETRY_MAX_S = 5
# Jobs taken in one fetch (when that many slots are free): enough to group a burst.
MAX_BATCH = 16
# Jobs one session carries in a row: a burst to one destination still goes out over
# several sessions in parallel, each saving the connect, EHLO and TLS of the others.
JOBS_PER_SESSION = 4


@dataclass(frozen=True)
class WorkerSettings:
    slots: int  # deliveries this process runs at once
    ack_wait: float
    instance: str


class DeliveryWorker:
    def __init__(
        self,
        js: JetStreamContext,
        bodies: BodyStore,
        courier: Courier,
        settings: WorkerSettings,
        fault: str | None = None,
        local: LocalDelivery | None = None,
    ) -> None:
        self._js = js
        self._local = local
        self._bodies = bodies
        self._courier = courier
        self._settings = settings
        self._fault = fault if fault is not None else os.environ.get(FAULT_ENV, "")
        self._slots = asyncio.Semaphore(settings.slots)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._guard = RedeliveryGuard(js)
        self._claims = JobClaims(js, settings.ack_wait, settings.instance)

    async def run(self, sub: JetStreamContext.PullSubscription, stopping: asyncio.Event) -> None:
        """Fetch only as many jobs as there are free slots: never sit on jobs we cannot start."""
        while not stopping.is_set():
            await self._slots.acquire()
            taken = 1
            while taken < MAX_BATCH and not self._slots.locked():
                await self._slots.acquire()
                taken += 1
            if stopping.is_set():
                self._release(taken)
                break
            try:
                msgs = await sub.fetch(taken, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                msgs = []
            except Exception as exc:  # NATS reconnecting and the like
                log.warning("delivery: fetch failed: %s", exc)
                msgs = []
                await asyncio.sleep(FETCH_TIMEOUT_S)
            for extra in msgs[taken:]:  # never more than asked; be safe if it ever is
                await extra.nak()
            msgs = msgs[:taken]
            self._release(taken - len(msgs))
            for group in _by_destination(msgs):
                task = asyncio.create_task(self._group(group), name="delivery-group")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def drain(self) -> None:
        """Wait for the jobs already started; called once fetching has stopped."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _group(self, msgs: list[tuple[Msg, DeliveryJob | None]]) -> None:
        """Jobs for one destination, in order, over one session where possible."""
        heartbeats = [asyncio.create_task(self._keep_alive(m)) for m, _ in msgs]
        session: SmtpSession | None = None
        route: Route | NoRoute | None = None
        try:
            for (msg, job), heartbeat in zip(msgs, heartbeats, strict=True):
                try:
                    if job is None:
                        await msg.term()
                        continue
                    async with self._guard.working_on(job):
                        if await self._sent_before(msg, job):
                            await msg.ack()
                            continue
                        async with self._claims.claimed(job.job_id) as claim:
                            if claim is None:
                                await self._held_elsewhere(msg, job)
                                continue
                            if route is None and unsupported(job.destination) is None:
                                route = await self._courier.route(job.destination)
                            session = await self._job(msg, job, route, session, claim)
                except Exception:
                    log.exception("delivery: job on %s failed; retrying", msg.subject)
                    # If even the nak cannot reach NATS, ack_wait brings the job back anyway.
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=RETRY_DELAY_S)
                finally:
                    heartbeat.cancel()
                    self._slots.release()
        finally:
            for heartbeat in heartbeats:
                heartbeat.cancel()
            if session is not None:
                await session.close()

    async def _sent_before(self, msg: Msg, job: DeliveryJob) -> bool:
        """A redelivered copy of a job whose results are already recorded."""
        if msg.metadata.num_delivered is None or msg.metadata.num_delivered < 2:
            return False
        if not await self._guard.recorded(job):
            return False
        log.info(
            "delivery %s: job %s redelivered after its results; acked", job.queue_id, job.job_id
        )
        return True

    async def _held_elsewhere(self, msg: Msg, job: DeliveryJob) -> None:
        """Another worker is sending this job (JetStream handed it out twice): leave it to
        that worker and ask again later, when its results are recorded (the copy is then
        acked unsent) or its claim has expired (it died: this copy sends)."""
        delay = min(msg.metadata.num_delivered or 1, CLAIM_RETRY_MAX_S)
        log.info(
            "delivery %s: job %s is being sent by another worker; again in %.0f s",
            job.queue_id,
            job.job_id,
            delay,
        )
        await msg.nak(delay=delay)

    async def _body_missing(self, msg: Msg, job: DeliveryJob) -> None:
        """The queue deletes a body only once the message is done, so a job without one is
        usually a late copy of finished work: dropped. But a replica that is still catching
        up (a NATS node just restarted) can answer a direct get with "no such message"
        for a body that exists: while the message is not done, try again soon."""
        delivered = msg.metadata.num_delivered or 1
        if await self._guard.finished(job) or delivered >= BODY_MISSING_TRIES:
            log.info("delivery %s: body gone, job %s dropped", job.queue_id, job.job_id)
            await msg.term()
            return
        log.warning(
            "delivery %s: body not found for job %s (try %d); again in %.0f s",
            job.queue_id,
            job.job_id,
            delivered,
            RETRY_DELAY_S,
        )
        await msg.nak(delay=RETRY_DELAY_S)

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(min(HEARTBEAT_S, self._settings.ack_wait / 4), 0.2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _job(
        self,
        msg: Msg,
        job: DeliveryJob,
        route: Route | NoRoute | None,
        session: SmtpSession | None,
        claim: Claim,
    ) -> SmtpSession | None:
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
                **messaging_attributes(msg.subject, "process", job.job_id),
            },
        ) as span:
            loop = asyncio.get_running_loop()
            started = loop.time()
            stand_in = unsupported(job.destination)
            local = self._local if job.destination.kind == "local" else None
            local_replies = None
            if local is None and (stand_in is not None or route is None):
                attempt = Attempt(Transcript(broken=stand_in))
            else:
                body = await self._body(job.queue_id)
                if body is None:
                    span.set_attribute("mailbus.body_missing", True)
                    await self._body_missing(msg, job)
                    return session
                if local is not None:
                    handed = loop.time()
                    local_replies = await local.deliver(job, body)
                    attempt = Attempt(
                        Transcript(),
                        remote_host=local.remote_host,
                        transfer_s=loop.time() - handed,
                    )
                else:
                    assert route is not None
                    reused = session is not None
                    attempt, session = await self._courier.deliver(job, route, body, session)
                    span.set_attribute("smtp.session_reused", reused)
            replies = local_replies or replies_for(attempt.transcript, len(job.recipients))
            events = result_events(
                job,
                replies,
                remote_host=attempt.remote_host,
                tls_version=attempt.tls_version,
                remote_dsn=attempt.remote_dsn,
                worker=self._settings.instance,
                now=datetime.now(UTC),
                timings=DeliveryTimings(
                    scheduled_at=msg.metadata.timestamp,
                    setup_s=round(attempt.setup_s, 4),
                    transfer_s=round(attempt.transfer_s, 4),
                ),
            )
            _annotate(span, attempt, [r.code for r in replies])
            # Every result must be durable before the job is acked (then it cannot vanish).
            await asyncio.gather(*(publish_result(self._js, e) for e in events))
            _count(job, events, loop.time() - started)
        if self._fault == FAULT_EXIT_BEFORE_ACK:
            log.warning("delivery: fault %s: exiting before ack of %s", self._fault, job.job_id)
            os._exit(137)
        claim.settled = True
        await msg.ack()
        return session

    async def _body(self, queue_id: str) -> bytes | None:
        return await self._bodies.get(queue_id)


async def publish_result(
    js: JetStreamContext, event: Event, limit_s: float = RESULT_PUBLISH_LIMIT_S
) -> None:
    """Publish one result until JetStream acknowledges it, for up to `limit_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    pause = 0.1
    while True:
        try:
            await bus.publish_event(js, event)
            return
        except Exception as exc:
            if loop.time() + pause > deadline:
                raise
            log.warning(
                "delivery: result %s not yet published: %s; retrying",
                event.event_id,
                type(exc).__name__,
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, RESULT_RETRY_MAX_S)


def _parse(msg: Msg) -> DeliveryJob | None:
    try:
        return DeliveryJob.model_validate_json(msg.data)
    except ValidationError as exc:
        log.error("delivery: dropping unreadable job on %s: %s", msg.subject, exc)
        return None


def _by_destination(msgs: list[Msg]) -> list[list[tuple[Msg, DeliveryJob | None]]]:
    """Jobs grouped by destination in fetch order, JOBS_PER_SESSION at most per group;
    unreadable ones alone (to be dropped)."""
    groups: dict[str, list[tuple[Msg, DeliveryJob | None]]] = {}
    for index, msg in enumerate(msgs):
        job = _parse(msg)
        key = job.destination.key if job is not None else f"unreadable:{index}"
        groups.setdefault(key, []).append((msg, job))
    return [
        group[i : i + JOBS_PER_SESSION]
        for group in groups.values()
        for i in range(0, len(group), JOBS_PER_SESSION)
    ]


def _annotate(span: trace.Span, attempt: Attempt, codes: list[int]) -> None:
    transcript = attempt.transcript
    last = transcript.data or transcript.broken or transcript.mail
    if attempt.endpoint is not None:
        span.set_attribute("server.address", attempt.endpoint.ip)
        span.set_attribute("server.port", attempt.endpoint.port)
    if last is not None:
        span.set_attribute("smtp.reply_code", last.code)
        span.set_attribute("smtp.status", last.enhanced_status)
    span.set_attribute("smtp.reply_codes", codes)
    if attempt.tls_version:
        span.set_attribute("tls.protocol.version", attempt.tls_version)
    if transcript.broken is not None:
        span.set_status(trace.StatusCode.ERROR, transcript.broken.text)


_RESULT_LABELS = {
    "DeliverySucceeded": "delivered",
    "DeliveryDeferred": "deferred",
    "DeliveryFailed": "failed",
}


def _count(job: DeliveryJob, events: Sequence[Event], seconds: float) -> None:
    kind = job.destination.kind
    DELIVERY_SECONDS.labels(kind).observe(seconds)
    for event in events:
        # One count per recipient, whichever form the results took.
        each = event.per_recipient() if isinstance(event, DeliveryAttempted) else (event,)
        for result in each:
            label = _RESULT_LABELS.get(event_type(result), "other")
            DELIVERY_ATTEMPTS.labels(kind, label).inc()
