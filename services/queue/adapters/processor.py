"""Turn one input (an event from MAILBUS_EVENTS or a fired timer) into the core's outputs.

For each input: state (cache, or folded from the stream), `decide`, publish the
outputs and wait for every PubAck, set timers, delete the body once allowed,
and only then ack the input. Any failure before the ack naks the input and
forgets the cached state, so the retry starts again from the stream.

A fired timer starts a new trace linked to the message's SMTP session: a retry
days later is not a child of that session, but it is one click away from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link
from pydantic import ValidationError

from libs.common.contract import subjects
from libs.common.contract.events import (
    AnyEvent,
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliverySucceeded,
    MessageReceived,
    event_type,
    parse_event,
)
from libs.common.mail.bodies import BodyStore
from libs.common.mail.history import message_history
from libs.common.mail.maillines import queue_lines
from libs.common.runtime import bus, maillog
from libs.common.runtime.fence import Fence, is_fenced
from libs.common.runtime.locks import KeyedLocks
from libs.common.runtime.metrics import DELIVERY_DELAY, QUEUE_EVENTS
from libs.common.runtime.telemetry import (
    context_from_headers,
    context_from_traceparent,
    messaging_attributes,
    tracer,
)
from services.queue.adapters.index import QueueIndex
from services.queue.adapters.timers import clear_timers, set_timer
from services.queue.core import (
    ClearTimers,
    DeleteBody,
    MessageState,
    Output,
    Routing,
    SetTimer,
    TimerFired,
    Timing,
    Trigger,
    apply,
    apply_outputs,
    decide,
    fold,
)

log = logging.getLogger(__name__)
_tracer = tracer("mailbus.queue")

# Redelivery delay after a failure (NATS down, publish timeout): soon, not in a hot loop.
RETRY_DELAY_S = 2.0
# An input of a partition another replica owns: back to the consumer for the owner.
NOT_OURS_DELAY_S = 0.5


# The status words of the mail log and of postfix_exporter's delay histogram.
_DELAY_STATUS = {
    "DeliverySucceeded": "sent",
    "DeliveryDeferred": "deferred",
    "DeliveryFailed": "bounced",
}


class QueueProcessor:
    def __init__(
        self,
        js: JetStreamContext,
        bodies: BodyStore,
        routing: Routing,
        timing: Timing,
        index: QueueIndex | None = None,
        max_cached: int = 10_000,
        fence: Callable[[str], Fence | None] | None = None,
        on_fenced: Callable[[str], Awaitable[None]] | None = None,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self._js = js
        # With fences, every event carries the epoch of its message's partition, as this
        # replica opened it on taking the partition: once a successor opened its own,
        # these publishes fail and `on_fenced` (given the queue id) gives the partition up.
        self._fence = fence
        self._on_fenced = on_fenced
        # Whether this replica owns a message's partition now: an input of another's (from
        # the consumer of the versions before partitions, or one fetched just before its
        # partition was given back) goes back to be handled by the owner.
        self._owns = owns
        self._bodies = bodies
        self._routing = routing
        self._timing = timing
        self.index = index if index is not None else QueueIndex(timing)
        self._max_cached = max_cached
        self._cache: OrderedDict[str, MessageState] = OrderedDict()
        # Per partition, the highest MAILBUS_EVENTS sequence read when it was taken or
        # handled since; absent until the service says, and then every uncached message
        # reads its history. Per partition, since each partition's consumer delivers in
        # stream order but the partitions' consumers run side by side.
        self._high_seq: dict[int, int] = {}
        self._locks = KeyedLocks()
        # Operator requests waiting for their input to be processed, by input id.
        self._waiters: dict[str, asyncio.Future[None]] = {}

    def own_through(
        self,
        owns: Callable[[str], bool],
        fence: Callable[[str], Fence | None],
        on_fenced: Callable[[str], Awaitable[None]],
    ) -> None:
        """Who owns which partitions, once that is known (it needs this processor)."""
        self._owns, self._fence, self._on_fenced = owns, fence, on_fenced

    def forget(self, queue_id: str) -> None:
        self._cache.pop(queue_id, None)

    def forget_partitions(self, partitions: Collection[int]) -> None:
        """Partitions given back: their messages' states are their new owner's now."""
        for queue_id in [q for q in self._cache if subjects.partition_of(q) in partitions]:
            del self._cache[queue_id]
        self.index.drop_partitions(partitions)
        for partition in partitions:
            self._high_seq.pop(partition, None)

    def seen_up_to(self, stream_seq: int, partitions: Iterable[int] | None = None) -> None:
        """Every event up to this sequence of these partitions (all, by default) was
        read when they were taken (call before seed)."""
        for p in range(subjects.QUEUE_PARTITIONS) if partitions is None else partitions:
            self._high_seq[p] = stream_seq

    def seed(self, states: Iterable[MessageState]) -> None:
        """Start with a warm cache (the states read at start-up for the index)."""
        for state in states:
            self._remember(state.queue_id, state)

    def waiter(self, input_id: str) -> asyncio.Future[None]:
        """A future resolved once the input with this id has been processed and acked."""
        future = self._waiters.get(input_id)
        if future is None:
            if len(self._waiters) > 1_000:  # requests that timed out and went away
                self._waiters = {k: f for k, f in self._waiters.items() if not f.done()}
            future = asyncio.get_running_loop().create_future()
            self._waiters[input_id] = future
        return future

    def _settled(self, input_id: str) -> None:
        future = self._waiters.pop(input_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def handle(self, msg: Msg) -> None:
        """An event from MAILBUS_EVENTS."""
        try:
            event = parse_event(msg.data)
        except ValidationError as exc:
            log.error("queue: dropping unreadable input on %s: %s", msg.subject, exc)
            await msg.term()
            return
        # A fresh message's history is this event alone: its fold needs no read.
        known = fold([event]) if self._unseen(msg, event) else None
        await self._handle(msg, event, event.queue_id, event.event_id, known)

    def _unseen(self, msg: Msg, event: AnyEvent) -> bool:
        """A MessageReceived that can have no history yet, so reading it is skipped
        (two round trips per message): delivered for the first time, and later in
        the stream than anything read at start-up or handled since. Only the queue
        writes a message's later events, in answer to this one; a redelivery, a
        replay by a new consumer or an out-of-order arrival reads the history, and so
        does one written before partitions (the old consumer's order is not its
        partition's)."""
        partition = subjects.partition_of(event.queue_id)
        high = self._high_seq.get(partition)
        if high is None or msg.subject != subjects.event_subject(event.queue_id, event.type):
            return False
        meta = msg.metadata
        seq = meta.sequence.stream
        fresh = isinstance(event, MessageReceived) and meta.num_delivered == 1 and seq > high
        self._high_seq[partition] = max(high, seq)
        return fresh

    async def handle_timer(self, msg: Msg) -> None:
        """A fired timer from MAILBUS_TIMERS."""
        try:
            fire = TimerFired.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("queue: dropping unreadable timer on %s: %s", msg.subject, exc)
            await msg.term()
            return
        await self._handle(msg, fire, fire.queue_id, fire.request_id)

    async def _handle(
        self,
        msg: Msg,
        trigger: Trigger,
        qid: str,
        input_id: str,
        known: MessageState | None = None,
    ) -> None:
        if self._owns is not None and not self._owns(qid):
            await msg.nak(delay=NOT_OURS_DELAY_S)
            return
        async with self._locks.hold(qid):
            state: MessageState | None = None
            try:
                state = known if known is not None else await self._state(qid)
            except Exception:
                log.exception("queue %s: cannot read its history; retrying", qid)
                await msg.nak(delay=RETRY_DELAY_S)
                return
            with self._span(msg, trigger, state) as span:
                try:
                    await self._process(qid, trigger, state)
                except Exception as exc:
                    self.forget(qid)
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR)
                    if is_fenced(exc):
                        log.critical(
                            "queue %s: write fenced off: a newer queue holds the lease", qid
                        )
                        await msg.nak()  # for the holder, at once
                        if self._on_fenced is not None:
                            await self._on_fenced(qid)
                        return
                    log.exception("queue %s: %s failed; retrying", qid, _describe(trigger))
                    await msg.nak(delay=RETRY_DELAY_S)
                    return
                await msg.ack()
                QUEUE_EVENTS.labels(_kind(trigger)).inc()
        if input_id:
            self._settled(input_id)

    def _span(
        self, msg: Msg, trigger: Trigger, state: MessageState
    ) -> AbstractContextManager[trace.Span]:
        attributes: dict[str, str] = {
            "mailbus.queue_id": state.queue_id or _qid(trigger),
            **messaging_attributes(msg.subject, "process"),
        }
        if isinstance(trigger, TimerFired):
            received = state.received
            origin = context_from_traceparent(received.trace_parent if received else None)
            session = trace.get_current_span(origin).get_span_context()
            attributes["mailbus.timer"] = trigger.kind
            return _tracer.start_as_current_span(
                f"queue timer {trigger.kind}",
                context=otel_context.Context(),  # a new trace, linked to the session
                kind=trace.SpanKind.CONSUMER,
                links=[Link(session)] if session.is_valid else [],
                attributes=attributes,
            )
        attributes["mailbus.event_id"] = trigger.event_id
        return _tracer.start_as_current_span(
            f"queue {event_type(trigger)}",
            context=context_from_headers(msg.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        )

    async def _state(self, queue_id: str) -> MessageState:
        cached = self._cache.get(queue_id)
        if cached is not None:
            return cached
        return fold(await message_history(self._js, queue_id))

    async def _process(self, qid: str, trigger: Trigger, state: MessageState) -> None:
        outputs = decide(state, trigger, datetime.now(UTC), self._routing, self._timing)
        after = state if isinstance(trigger, TimerFired) else apply(state, trigger)
        if not after.known:
            # Its MessageReceived is not in the stream: nothing can be delivered or completed.
            log.warning("queue %s: %s for an unknown message; ignored", qid, _describe(trigger))
            return
        for phase in _phases(outputs):
            await asyncio.gather(*(self._carry_out(output) for output in phase))
        final = apply_outputs(after, outputs)
        self._remember(qid, final)
        first = min((j.scheduled_at for j in after.jobs if j.scheduled_at), default=None)
        completed = qid if final.completed and not state.completed else None
        for line in queue_lines(trigger, outputs, after.received, first, completed):
            maillog.emit(line)
        received = after.received
        results = trigger.per_recipient() if isinstance(trigger, DeliveryAttempted) else (trigger,)
        for result in results:
            if received is not None and isinstance(
                result, DeliverySucceeded | DeliveryDeferred | DeliveryFailed
            ):
                delay = (result.occurred_at - received.occurred_at).total_seconds()
                DELIVERY_DELAY.labels(_DELAY_STATUS[result.type]).observe(max(delay, 0.0))

    async def _carry_out(self, output: Output) -> None:
        if isinstance(output, DeliveryJob):
            # A first attempt's job is the decision's only write (no fenced event comes
            # before it): go on only while the partition's lease is surely ours.
            fence = self._fence(output.queue_id) if self._fence is not None else None
            if fence is not None:
                fence.check()
            subject = subjects.job_subject(output.destination.key)
            await bus.publish_model(self._js, subject, output, msg_id=output.job_id)
        elif isinstance(output, SetTimer):
            await set_timer(self._js, output)
        elif isinstance(output, ClearTimers):
            await clear_timers(self._js, output.queue_id)
        elif isinstance(output, DeleteBody):
            await self._delete_body(output.queue_id)
        else:
            fence = self._fence(output.queue_id) if self._fence is not None else None
            if fence is not None:
                ack = await fence.publish_event(output)
            else:
                ack = await bus.publish_event(self._js, output)
            log.debug(
                "queue %s: %s seq=%s dup=%s",
                output.queue_id,
                output.event_id,
                ack.seq,
                ack.duplicate,
            )

    async def _delete_body(self, queue_id: str) -> None:
        # Purging a body already gone (a redelivered input) is no error.
        await self._bodies.delete(queue_id)

    def _remember(self, queue_id: str, state: MessageState) -> None:
        self.index.update(state)
        if state.done and state.reports_answered:
            # Late inputs for a finished message are rare; they rebuild from the stream.
            self._cache.pop(queue_id, None)
            return
        self._cache[queue_id] = state
        self._cache.move_to_end(queue_id)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)


def _phases(outputs: list[Output]) -> list[list[Output]]:
    """Outputs in the order the core gave, but what may go out together does.

    Events one by one (the log keeps their order: reports before MessageCompleted);
    then jobs and timers together (their events are durable by then); the clean-up
    (purging timers, deleting the body) last, once all of that is acknowledged."""
    phases: list[list[Output]] = []
    work: list[Output] = []
    cleanup: list[Output] = []
    for output in outputs:
        if isinstance(output, DeliveryJob | SetTimer):
            work.append(output)
        elif isinstance(output, ClearTimers | DeleteBody):
            cleanup.append(output)
        else:
            phases.append([output])
    return phases + [phase for phase in (work, cleanup) if phase]


def _qid(trigger: Trigger) -> str:
    return trigger.queue_id


def _describe(trigger: Trigger) -> str:
    if isinstance(trigger, TimerFired):
        return f"{trigger.kind} timer due {trigger.due.isoformat()}"
    return trigger.event_id


def _kind(trigger: Trigger) -> str:
    return f"timer.{trigger.kind}" if isinstance(trigger, TimerFired) else event_type(trigger)
