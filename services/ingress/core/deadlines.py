"""How long a session waits for its client: per command, per piece of a message, per message.

Pure arithmetic on times the caller reads off its clock. A message must keep
arriving at `min_rate` bytes per second counted over the whole transfer, as
Postfix's smtpd_min_data_rate: every byte received buys `1 / min_rate` seconds
more on top of one `piece_timeout`, so an honest slow sender is never cut off
at a fixed time and a trickle of one byte per read cannot hold a session for ever.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deadlines:
    command_timeout: float  # seconds for one command line
    piece_timeout: float  # seconds for the next piece of a message (DATA or BDAT)
    min_rate: int = 0  # bytes per second over the transfer; 0: off


@dataclass
class TransferClock:
    """The deadline of one message transfer, started when the client may begin sending."""

    deadlines: Deadlines
    started: float
    received: int = 0

    def wait(self, now: float) -> float:
        """How long the next read may wait; 0 or less: the transfer is too slow."""
        piece = self.deadlines.piece_timeout
        if not self.deadlines.min_rate:
            return piece
        budget = self.started + piece + self.received / self.deadlines.min_rate - now
        return min(piece, budget)

    def add(self, size: int) -> None:
        self.received += size
