"""Playing ingress and the notifier around the queue and delivery services in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import datetime

import pytest
from nats.js import JetStreamContext

from libs.common.config import Config
from libs.common.contract.events import Client, MessageReceived, Recipient, ReportSent
from libs.common.mail.bodies import BodyStore
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running, start_service
from libs.common.runtime.telemetry import current_traceparent
from services.delivery.service import DeliveryService
from services.queue.service import QueueService

ACK_WAIT_S = 2.0
BODY = (
    b"From: alice@example.test\r\n"
    b"To: several@remote.test\r\n"
    b"Subject: walking skeleton\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"8-bit: \xc3\xa9t\xc3\xa9\r\n"
    b"\r\n"
)


async def start_queue(config: Config, server: EmbeddedNats) -> Running:
    return await start_service("queue", QueueService, config, [server.url])


async def start_delivery(config: Config, server: EmbeddedNats) -> Running:
    return await start_service(
        "delivery", lambda ctx: DeliveryService(ctx, ack_wait=ACK_WAIT_S), config, [server.url]
    )


@pytest.fixture
async def services() -> AsyncIterator[list[Running]]:
    """Whatever a test starts goes here and is closed even when the test fails."""
    running: list[Running] = []
    yield running
    for item in reversed(running):
        try:
            await item.close()
        except Exception:  # already closed by the test
            pass


async def receive(
    js: JetStreamContext,
    qid: str,
    recipients: list[str] | list[Recipient],
    sender: str = "alice@example.test",
    body: bytes = BODY,
    at: datetime | None = None,
) -> MessageReceived:
    """What ingress does: the body into the bodies stream, then MessageReceived.

    `at` backdates the arrival (a message that has waited long already)."""
    await BodyStore(js).put(qid, body)
    extra = {"occurred_at": at} if at is not None else {}
    event = MessageReceived(
        event_id=f"{qid}.received",
        queue_id=qid,
        mail_from=sender,
        recipients=tuple(
            r if isinstance(r, Recipient) else Recipient(address=r) for r in recipients
        ),
        size=len(body),
        client=Client(ip="127.0.0.1"),
        trace_parent=current_traceparent(),
        **extra,
    )
    ack = await bus.publish_event(js, event)
    assert not ack.duplicate
    return event


async def answer_report(js: JetStreamContext, qid: str, trigger_event_id: str, kind: str) -> None:
    """What the notifier does once it has sent (or skipped) the report for a trigger."""
    await bus.publish_event(
        js,
        ReportSent.model_validate(
            {
                "event_id": f"{trigger_event_id}.report",
                "queue_id": qid,
                "trigger_event_id": trigger_event_id,
                "kind": kind,
            }
        ),
    )


# --- tiny async predicates -----------------------------------------------------------------


async def not_(value: Awaitable[bool]) -> bool:
    return not await value


async def positive(value: Awaitable[int]) -> bool:
    return await value > 0


async def zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
