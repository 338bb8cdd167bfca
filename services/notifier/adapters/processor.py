"""One trigger event in, at most one report out, then ReportSent, then the ack.

Order, so that a crash anywhere is repaired by redelivery: read the message's
history (a ReportSent for this trigger means the work is done), decide, submit
the report under a queue id derived from the trigger (an existing one is not
submitted again), publish ReportSent, and only then ack the trigger.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from pydantic import ValidationError

from libs.common.contract.events import (
    Client,
    MessageReceived,
    Recipient,
    ReportSent,
    event_type,
    parse_event,
)
from libs.common.contract.ids import derived_queue_id
from libs.common.mail import maillines
from libs.common.mail.bodies import BodyStore
from libs.common.mail.history import message_history, message_received
from libs.common.mail.submission import MessageStore
from libs.common.runtime import bus, maillog
from libs.common.runtime.locks import KeyedLocks
from libs.common.runtime.metrics import REPORTS_SENT
from libs.common.runtime.telemetry import (
    context_from_headers,
    current_traceparent,
    messaging_attributes,
    tracer,
)
from services.notifier.core import (
    NoReport,
    ReportInput,
    ReportPlan,
    Translator,
    Trigger,
    decide,
    needs_utf8,
    read_headers,
    render,
    trigger_of,
)

log = logging.getLogger(__name__)
_tracer = tracer("mailbus.notifier")

RETRY_DELAY_S = 5.0


def report_queue_id(trigger: Trigger) -> str:
    return derived_queue_id(f"report:{trigger.event_id}", trigger.occurred_at.timestamp())


class NotifierProcessor:
    def __init__(
        self,
        js: JetStreamContext,
        catalogs: Mapping[str, Translator],
        hostname: str,
        postmaster: str,
        language: str,
    ) -> None:
        self._js = js
        self._catalogs = catalogs
        self._hostname = hostname
        self._postmaster = postmaster
        self._language = language
        self._store = MessageStore(js)
        self._bodies = BodyStore(js)
        # Triggers of one message are answered one at a time, so a duplicate in the
        # same batch sees the first one's ReportSent instead of racing it.
        self._locks = KeyedLocks()

    async def handle(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data)
        except ValidationError as exc:
            log.error("notifier: dropping unreadable input on %s: %s", msg.subject, exc)
            await msg.term()
            return
        trigger = trigger_of(event)
        if trigger is None:
            await msg.ack()  # a type outside the filter: not ours to answer
            return
        with _tracer.start_as_current_span(
            f"notifier {event_type(event)}",
            context=context_from_headers(msg.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "mailbus.queue_id": event.queue_id,
                "mailbus.event_id": event.event_id,
                **messaging_attributes(msg.subject, "process", event.event_id),
            },
        ) as span:
            try:
                async with self._locks.hold(trigger.queue_id):
                    report_id = await self.answer(trigger)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR)
                log.exception(
                    "notifier %s: %s failed; retrying", trigger.queue_id, trigger.event_id
                )
                await msg.nak(delay=RETRY_DELAY_S)
                return
            if report_id:
                span.set_attribute("mailbus.report_queue_id", report_id)
            await msg.ack()

    async def answer(self, trigger: Trigger) -> str | None:
        """Make the report (if due) durable and record the answer; returns its queue id."""
        history = await message_history(self._js, trigger.queue_id)
        for past in history:
            if isinstance(past, ReportSent) and past.trigger_event_id == trigger.event_id:
                return past.report_queue_id  # answered before a crash lost the ack
        received = next((e for e in history if isinstance(e, MessageReceived)), None)
        report_id: str | None = None
        if received is None:
            log.error("notifier %s: no MessageReceived; cannot report", trigger.queue_id)
        else:
            report_id = await self.make_report(trigger, received)
        await bus.publish_event(
            self._js,
            ReportSent(
                event_id=f"{trigger.event_id}.report",
                queue_id=trigger.queue_id,
                trigger_event_id=trigger.event_id,
                kind=trigger.kind,
                report_queue_id=report_id,
            ),
        )
        return report_id

    async def make_report(self, trigger: Trigger, received: MessageReceived) -> str | None:
        """Submit the report if one is due and not submitted yet; its queue id or None."""
        # A null-sender message that is not one of our reports never gets a report:
        # no need to read what may be a large body.
        wanted = received.mail_from != "" or received.report_of is not None
        original = await self._body(trigger.queue_id) if wanted else None
        headers = read_headers(original) if original is not None else None
        plan = decide(trigger, received, headers, self._postmaster, self._language)
        if isinstance(plan, NoReport):
            log.info("notifier %s: no %s report: %s", trigger.queue_id, trigger.kind, plan.reason)
            return None
        report_id = report_queue_id(trigger)
        if await message_received(self._js, report_id) is not None:
            return report_id  # submitted before a crash; never twice
        await self._submit(trigger, received, plan, original, report_id)
        REPORTS_SENT.labels(trigger.kind).inc()
        maillog.emit(maillines.report(trigger.queue_id, trigger.kind, report_id))
        return report_id

    async def _submit(
        self,
        trigger: Trigger,
        received: MessageReceived,
        plan: ReportPlan,
        original: bytes | None,
        report_id: str,
    ) -> None:
        now = datetime.now(UTC)
        inp = ReportInput(
            plan=plan,
            trigger=trigger,
            received=received,
            original=original,
            hostname=self._hostname,
            report_queue_id=report_id,
            now=now,
        )
        body = render(inp, self._catalogs[plan.language])
        report = MessageReceived(
            event_id=f"{report_id}.received",
            queue_id=report_id,
            occurred_at=now,
            mail_from="",
            recipients=(Recipient(address=plan.to),),
            size=len(body),
            client=Client(ip="127.0.0.1", helo=self._hostname, listener="notifier"),
            smtputf8=needs_utf8(inp),
            trace_parent=current_traceparent(),
            report_of=received.queue_id,
        )
        await self._store.accept(body, report)

    async def _body(self, queue_id: str) -> bytes | None:
        return await self._bodies.get(queue_id)
