"""`mailbus queue ...` on the bus: nats.micro endpoints of the queue service.

Requests and replies are JSON (`ops.queuectl` is the client). Commands
that change a message are events in its log (MessageHeld, MessageReleased,
MessageDeleted) or a fired retry timer; the endpoint publishes them, waits until
the queue's consumer has processed them like any other input, then answers.
So there is still one writer per message, and `show` tells who did what.

Every replica subscribes in a queue group of its own, so each hears every request:
`list` is answered by each with the partitions it owns (the client gathers replies
until every partition is covered); a request about one message is answered by the
owner of its partition alone, the others stay silent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.micro.request import Request
from nats.micro.service import Service as MicroService

from libs.common.contract import subjects
from libs.common.contract.events import Event, MessageDeleted, MessageHeld, MessageReleased
from libs.common.mail.history import message_history
from libs.common.runtime import bus
from services.queue.adapters.errors import BadRequest, NotDeferred, NotHeld, NotQueued, QueueError
from services.queue.adapters.partitions import Partitions
from services.queue.adapters.processor import QueueProcessor
from services.queue.adapters.timers import fire_now
from services.queue.core import QueueEntry, TimerFired

log = logging.getLogger(__name__)

# How long a command waits for the queue to have processed it before answering anyway.
PROCESS_WAIT_S = 10.0

Reply = dict[str, Any]


class QueueApi:
    def __init__(
        self, js: JetStreamContext, processor: QueueProcessor, partitions: Partitions
    ) -> None:
        self._js = js
        self._processor = processor
        self._partitions = partitions
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[Reply]]] = {
            "list": self._list,
            "show": self._show,
            "retry": self._retry,
            "hold": self._hold,
            "release": self._release,
            "delete": self._delete,
        }

    async def register(self, micro: MicroService) -> None:
        # A group of this replica's own: named after its member key, unique per replica.
        group = f"queue-{subjects.token(self._partitions.member)}"
        for op in subjects.QUEUE_API_OPS:
            await micro.add_endpoint(
                name=f"queue-{op}",
                subject=subjects.queue_api_subject(op),
                handler=self._handler(op),
                queue_group=group,
            )

    def _handler(self, op: str) -> Callable[[Request], Awaitable[None]]:
        async def handle(request: Request) -> None:
            try:
                body = _body(request)
                if op != "list" and not self._ours(body):
                    return  # another replica's message: its owner answers
                reply = await self._ops[op](body)
            except QueueError as exc:
                reply = exc.reply
            except (ValueError, KeyError) as exc:  # a missing or malformed field
                reply = BadRequest(exc).reply
            except Exception as exc:  # the operator gets an answer, not a time-out
                log.exception("queue api %s failed", op)
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            await request.respond(json.dumps(reply, default=str).encode())

        return handle

    def _ours(self, body: dict[str, Any]) -> bool:
        """Whether this replica answers: it owns the message's partition. A request naming
        no message (retry with `all`) is answered by the owner of partition 0 alone, for
        the messages it holds; `mailbus queue retry ALL` lists first and names each."""
        if "queue_id" in body:
            return self._partitions.owns(str(body["queue_id"]))
        return 0 in self._partitions.owned()

    def _entry(self, body: dict[str, Any]) -> QueueEntry:
        qid = str(body["queue_id"])
        entry = self._processor.index.get(qid)
        if entry is None:
            raise NotQueued(qid)
        return entry

    async def _list(self, body: dict[str, Any]) -> Reply:
        return {
            "partitions": self._partitions.owned(),
            "entries": [e.model_dump(mode="json") for e in self._processor.index.entries()],
        }

    async def _show(self, body: dict[str, Any]) -> Reply:
        qid = str(body["queue_id"])
        events = await message_history(self._js, qid)
        if not events:
            raise NotQueued(qid)
        entry = self._processor.index.get(qid)
        return {
            "queue_id": qid,
            "entry": entry.model_dump(mode="json") if entry is not None else None,
            "events": [e.model_dump(mode="json") for e in events],
        }

    async def _retry(self, body: dict[str, Any]) -> Reply:
        if body.get("all"):
            targets = [e for e in self._processor.index.entries() if e.state == "deferred"]
        else:
            targets = [self._entry(body)]
            if targets[0].state != "deferred":
                raise NotDeferred(targets[0].queue_id, targets[0].state)
        waits = []
        for entry in targets:
            fire = TimerFired(
                queue_id=entry.queue_id,
                kind="retry",
                due=datetime.now(UTC),
                forced=True,
                request_id=f"{entry.queue_id}.retry.{uuid.uuid4().hex[:12]}",
            )
            waits.append(self._processor.waiter(fire.request_id))
            await fire_now(self._js, fire)
        await self._wait(*waits)
        return {"retried": [e.queue_id for e in targets]}

    async def _hold(self, body: dict[str, Any]) -> Reply:
        entry = self._entry(body)
        if entry.state == "held":
            return {"held": entry.queue_id, "note": "already held"}
        await self._command(MessageHeld, entry, body)
        return {"held": entry.queue_id}

    async def _release(self, body: dict[str, Any]) -> Reply:
        entry = self._entry(body)
        if entry.state != "held":
            raise NotHeld(entry.queue_id)
        await self._command(MessageReleased, entry, body)
        return {"released": entry.queue_id}

    async def _delete(self, body: dict[str, Any]) -> Reply:
        entry = self._entry(body)
        await self._command(MessageDeleted, entry, body, recipients=entry.recipients)
        return {"deleted": entry.queue_id}

    async def _command(
        self, cls: type[Event], entry: QueueEntry, body: dict[str, Any], **extra: Any
    ) -> None:
        verb = cls.__name__.removeprefix("Message").lower()
        event_id = (
            f"{entry.queue_id}.{verb}"
            if cls is MessageDeleted
            else f"{entry.queue_id}.{verb}.{uuid.uuid4().hex[:12]}"
        )
        event = cls.model_validate(
            {
                "event_id": event_id,
                "queue_id": entry.queue_id,
                "operator": str(body.get("operator", "")),
                **extra,
            }
        )
        done = self._processor.waiter(event_id)
        await bus.publish_event(self._js, event)
        await self._wait(done)

    async def _wait(self, *futures: asyncio.Future[None]) -> None:
        if futures:
            await asyncio.wait(futures, timeout=PROCESS_WAIT_S)
        for future in futures:
            future.cancel()  # no-op when done; frees a waiter whose input never came


def _body(request: Request) -> dict[str, Any]:
    body = json.loads(request.data or b"{}")
    if not isinstance(body, dict):
        raise BadRequest("the request must be a JSON object")
    return body
