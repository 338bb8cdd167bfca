"""Make a message durable: body into the bodies stream, then MessageReceived.

Used by ingress for mail from clients and by the notifier for its reports, so
both obey one rule. The order matters: a MessageReceived whose body is missing
would be a message nobody can deliver, while a body without its event is only
garbage that the failure path removes.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from nats.js import JetStreamContext

from libs.common.contract.errors import MailbusError
from libs.common.contract.events import MessageReceived
from libs.common.mail.bodies import BodyStore
from libs.common.runtime import bus
from libs.common.runtime.telemetry import tracer

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

PUBLISH_ATTEMPTS = 2


class StoreError(MailbusError):
    """The message is not durable; the client must be told to try again."""


class MessageStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._bodies = BodyStore(js)

    async def accept(
        self, body: bytes | BinaryIO, event: MessageReceived, prefix: bytes = b""
    ) -> None:
        """Return only once JetStream acknowledged both the body and the event.

        `body` may be a binary file positioned at the start of the content (it is
        read a chunk at a time); `prefix` (a Received header) goes before it.
        """
        qid = event.queue_id
        stored = False
        try:
            with _tracer.start_as_current_span("store body") as span:
                span.set_attribute("mailbus.queue_id", qid)
                stored = True  # from here a partial body may exist
                size = await self._bodies.put(qid, body, prefix)
                span.set_attribute("mailbus.size", size)
            with _tracer.start_as_current_span("publish MessageReceived") as span:
                span.set_attribute("mailbus.queue_id", qid)
                await self._publish(event)
        except Exception as exc:
            log.error("queue id %s not accepted: %s: %s", qid, type(exc).__name__, exc)
            if stored:
                await self._discard(qid)
            raise StoreError(str(exc)) from exc

    async def _publish(self, event: MessageReceived) -> None:
        # A timed-out publish may still have been stored; sending it again under
        # the same Nats-Msg-Id is deduplicated, and turns "unknown" into an answer.
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                await bus.publish_event(self._js, event)
                return
            except Exception as exc:
                if attempt + 1 == PUBLISH_ATTEMPTS:
                    raise
                log.warning("publish %s: %s; retrying", event.event_id, type(exc).__name__)

    async def _discard(self, qid: str) -> None:
        try:
            await self._bodies.delete(qid)
        except Exception as exc:
            # Left behind it is harmless: no event refers to it.
            log.warning("could not remove body %s: %s: %s", qid, type(exc).__name__, exc)
