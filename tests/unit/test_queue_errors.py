"""The queue API's refusals: one root, and the answer each gives the operator."""

from __future__ import annotations

import pytest

from libs.common.contract.errors import MailbusError
from services.queue.adapters.errors import (
    BadRequest,
    NotDeferred,
    NotHeld,
    NotQueued,
    QueueError,
)


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        (NotQueued("Q1"), "Q1: no such message in the queue"),
        (NotDeferred("Q1", "held"), "Q1 is held, not deferred"),
        (NotHeld("Q1"), "Q1 is not held"),
        (BadRequest(KeyError("queue_id")), "bad request: 'queue_id'"),
        (
            BadRequest("the request must be a JSON object"),
            "bad request: the request must be a JSON object",
        ),
    ],
)
def test_each_refusal_carries_its_answer(error: QueueError, answer: str) -> None:
    assert isinstance(error, MailbusError)
    assert error.reply == {"error": answer}
