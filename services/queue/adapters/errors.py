"""The queue's errors, under one root: each is an operator request the queue refuses, and
carries the answer `mailbus queue ...` shows for it (`reply`). No core raises them: what
the queue decides about a message is never an error, only the operator's requests are."""

from __future__ import annotations

from typing import Any

from libs.common.contract.errors import MailbusError


class QueueError(MailbusError):
    """A request the queue's API refuses; str() is what the operator reads."""

    @property
    def reply(self) -> dict[str, Any]:
        return {"error": str(self)}


class BadRequest(QueueError):
    def __init__(self, detail: object) -> None:
        super().__init__(f"bad request: {detail}")


class NotQueued(QueueError):
    def __init__(self, queue_id: str) -> None:
        super().__init__(f"{queue_id}: no such message in the queue")
        self.queue_id = queue_id


class NotDeferred(QueueError):
    """`retry` is for deferred messages: an active one has an attempt running, a held one
    is attempted by `release`."""

    def __init__(self, queue_id: str, state: str) -> None:
        super().__init__(f"{queue_id} is {state}, not deferred")
        self.queue_id = queue_id


class NotHeld(QueueError):
    def __init__(self, queue_id: str) -> None:
        super().__init__(f"{queue_id} is not held")
        self.queue_id = queue_id
