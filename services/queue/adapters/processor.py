"""Turn one input message from MAILBUS_EVENTS into the core's outputs, durably.

For each input: state (cache, or folded from the stream), `decide`, publish the
outputs and wait for every PubAck, delete the body once MessageCompleted is
durable, and only then ack the input. Any failure before the ack naks the input
and forgets the cached state, so the retry starts again from the stream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from opentelemetry import trace
from pydantic import ValidationError

from libs.common import bus, subjects
from libs.common.events import (
    AnyEvent,
    DeliveryJob,
    DeliveryScheduled,
    MessageCompleted,
    event_type,
    parse_event,
)
from libs.common.telemetry import context_from_headers, tracer
from services.queue.adapters.history import load_history
from services.queue.adapters.locks import KeyedLocks
from services.queue.core import (
    DeleteBody,
    MessageState,
    Output,
    Routing,
    apply,
    apply_outputs,
    decide,
    fold,
)

log = logging.getLogger(__name__)
_tracer = tracer("mailbus.queue")

# Redelivery delay after a failure (NATS down, publish timeout): soon, not in a hot loop.
RETRY_DELAY_S = 2.0


class QueueProcessor:
    def __init__(
        self,
        js: JetStreamContext,
        bodies: ObjectStore,
        routing: Routing,
        max_cached: int = 10_000,
    ) -> None:
        self._js = js
        self._bodies = bodies
        self._routing = routing
        self._max_cached = max_cached
        self._cache: OrderedDict[str, MessageState] = OrderedDict()
        self._locks = KeyedLocks()

    def forget(self, queue_id: str) -> None:
        self._cache.pop(queue_id, None)

    async def handle(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data)
        except ValidationError as exc:
            log.error("queue: dropping unreadable input on %s: %s", msg.subject, exc)
            await msg.term()
            return
        async with self._locks.hold(event.queue_id):
            with _tracer.start_as_current_span(
                f"queue {event_type(event)}",
                context=context_from_headers(msg.headers),
                kind=trace.SpanKind.CONSUMER,
                attributes={"mailbus.queue_id": event.queue_id, "mailbus.event_id": event.event_id},
            ) as span:
                try:
                    await self._process(event)
                except Exception as exc:
                    self.forget(event.queue_id)
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR)
                    log.exception("queue %s: %s failed; retrying", event.queue_id, event.event_id)
                    await msg.nak(delay=RETRY_DELAY_S)
                    return
                await msg.ack()

    async def _state(self, queue_id: str) -> MessageState:
        cached = self._cache.get(queue_id)
        if cached is not None:
            return cached
        return fold(await load_history(self._js, queue_id))

    async def _process(self, event: AnyEvent) -> None:
        qid = event.queue_id
        state = await self._state(qid)
        outputs = decide(state, event, datetime.now(UTC), self._routing)
        after = apply(state, event)
        if not after.known:
            # Its MessageReceived is not in the stream: nothing can be delivered or completed.
            log.warning("queue %s: %s for an unknown message; ignored", qid, event.event_id)
            return
        for output in outputs:
            await self._carry_out(output)
        self._remember(qid, apply_outputs(after, outputs))

    async def _carry_out(self, output: Output) -> None:
        if isinstance(output, DeliveryScheduled | MessageCompleted):
            ack = await bus.publish_event(self._js, output)
            log.debug(
                "queue %s: %s seq=%s dup=%s",
                output.queue_id,
                output.event_id,
                ack.seq,
                ack.duplicate,
            )
        elif isinstance(output, DeliveryJob):
            subject = subjects.job_subject(output.destination.key)
            await bus.publish_model(self._js, subject, output, msg_id=output.job_id)
        elif isinstance(output, DeleteBody):
            await self._delete_body(output.queue_id)

    async def _delete_body(self, queue_id: str) -> None:
        try:
            await self._bodies.delete(queue_id)
        except NotFoundError:
            pass  # already deleted (a redelivered input) or never stored

    def _remember(self, queue_id: str, state: MessageState) -> None:
        if state.completed:
            # Late inputs for a finished message are rare; they rebuild from the stream.
            self._cache.pop(queue_id, None)
            return
        self._cache[queue_id] = state
        self._cache.move_to_end(queue_id)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
