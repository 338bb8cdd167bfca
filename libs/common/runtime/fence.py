"""Fencing a lease holder's writes to a stream: a deposed holder's publishes fail.

A lease (lease.py) tells a process when it may start deciding, but a holder that
was cut off, stalled or simply slow to notice can still publish after a successor
took over. So each new holder first appends an *epoch* marker to one subject of the
stream it writes, and every publish it makes afterwards carries
`Nats-Expected-Last-Subject-Sequence` for that subject (through
`Nats-Expected-Last-Subject-Sequence-Subject`): once a successor's marker is in the
stream, the server refuses every write of the old holder (wrong last sequence), and
the old holder learns it has lost. The marker is the only write the check costs.
"""

from __future__ import annotations

from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from libs.common.contract.errors import MailbusError

_WRONG_LAST_SEQUENCE = (10071, 10164)
EXPECTED_SUBJECT_HEADER = "Nats-Expected-Last-Subject-Sequence-Subject"


class Fenced(MailbusError):
    """A newer holder's epoch is in the stream: this process must stop writing."""


class Fence:
    def __init__(self, js: JetStreamContext, subject: str) -> None:
        self._js = js
        self.subject = subject
        self.epoch = 0

    async def open_epoch(self, holder: str) -> int:
        """Called right after the lease is taken, before the first decision."""
        ack = await self._js.publish(self.subject, holder.encode())
        self.epoch = int(ack.seq)
        return self.epoch

    def headers(self) -> dict[str, str]:
        if not self.epoch:
            raise Fenced("no epoch opened: this process does not hold the lease")
        return {
            api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(self.epoch),
            EXPECTED_SUBJECT_HEADER: self.subject,
        }


def is_fenced(exc: BaseException) -> bool:
    return isinstance(exc, Fenced) or (
        isinstance(exc, APIError) and exc.err_code in _WRONG_LAST_SEQUENCE
    )
