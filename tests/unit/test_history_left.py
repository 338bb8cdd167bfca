"""Whether a message's events say it has left the queue, for readers other than the queue."""

from __future__ import annotations

import pytest

from libs.common.contract.events import (
    AnyEvent,
    Client,
    DeliveryDeferred,
    DeliveryFailed,
    DeliverySucceeded,
    MessageCompleted,
    MessageDeleted,
    MessageExpired,
    MessageReceived,
    Recipient,
)
from libs.common.mail.history import left_queue

RECEIVED = MessageReceived(
    event_id="Q1.received",
    queue_id="Q1",
    mail_from="a@x.test",
    recipients=(Recipient(address="b@y.test"), Recipient(address="c@y.test")),
    size=1,
    client=Client(ip="127.0.0.1"),
)


def _result(
    cls: type[DeliverySucceeded | DeliveryDeferred | DeliveryFailed], rcpt: str
) -> AnyEvent:
    return cls(event_id=f"r.{rcpt}", queue_id="Q1", job_id="Q1.a1.d0", attempt=1, recipient=rcpt)


@pytest.mark.parametrize(
    ("events", "left"),
    [
        ([], False),
        ([RECEIVED], False),
        ([RECEIVED, _result(DeliverySucceeded, "b@y.test")], False),
        (
            [
                RECEIVED,
                _result(DeliverySucceeded, "b@y.test"),
                _result(DeliveryDeferred, "c@y.test"),
            ],
            False,
        ),
        (
            [RECEIVED, _result(DeliverySucceeded, "b@y.test"), _result(DeliveryFailed, "c@y.test")],
            True,
        ),
        (
            [
                RECEIVED,
                _result(DeliverySucceeded, "b@y.test"),
                MessageExpired(event_id="e", queue_id="Q1", recipients=("c@y.test",)),
            ],
            True,
        ),
        ([RECEIVED, MessageDeleted(event_id="d", queue_id="Q1")], True),
        # a history from before completion was implied
        ([RECEIVED, MessageCompleted(event_id="c", queue_id="Q1")], True),
    ],
)
def test_left_queue(events: list[AnyEvent], left: bool) -> None:
    assert left_queue(events) is left
