"""The message of one DATA command, assembled from what the wire delivers, within bounds.

The reader hands over pieces: a whole line ending in CRLF, or a fragment of a
line too long for its buffer. Once the message is over `size_limit` (or a
line over `line_limit`), nothing more is kept: the rest is only counted and
the end-of-data line looked for, so memory stays flat however much a client
sends. (aiosmtpd's own loop keeps every fragment of an unterminated line, so
one long line without CRLF would be held whole.)

The size is counted as RFC 1870 defines it: CRLFs included, the quoting dots
of dot-stuffed lines and the final `.` line not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

END_OF_DATA = b".\r\n"


class DataState(Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the line limit
    TOO_MUCH = "too_much"  # the message over the size limit (wins over TOO_LONG)


@dataclass
class DataAssembler:
    size_limit: int | None  # None or 0: no limit
    line_limit: int
    state: DataState = DataState.NOMINAL
    size: int = 0
    _lines: list[bytes] = field(default_factory=list)
    _partial: list[bytes] = field(default_factory=list)
    _line_length: int = 0  # raw octets of the line being read so far

    def feed(self, piece: bytes) -> bool:
        """Take one piece; True when it is the end-of-data line (which is not content)."""
        starts_line = self._line_length == 0
        if starts_line and piece == END_OF_DATA:
            return True
        self._line_length += len(piece)
        self.size += len(piece) - (1 if starts_line and piece.startswith(b".") else 0)
        if self.size_limit and self.size > self.size_limit:
            self._overflow(DataState.TOO_MUCH)
        elif self._line_length > self.line_limit and self.state is DataState.NOMINAL:
            self._overflow(DataState.TOO_LONG)
        if self.state is DataState.NOMINAL:
            self._partial.append(piece)
        if piece.endswith(b"\r\n"):
            if self.state is DataState.NOMINAL:
                line = b"".join(self._partial)
                self._lines.append(line[1:] if line.startswith(b".") else line)
            self._partial.clear()
            self._line_length = 0
        return False

    def _overflow(self, state: DataState) -> None:
        self.state = state
        self._lines.clear()
        self._partial.clear()

    @property
    def kept(self) -> int:
        """Octets held in memory now (for tests of the bound)."""
        return sum(map(len, self._lines)) + sum(map(len, self._partial))

    def content(self) -> bytes:
        """The message without dot-stuffing; only meaningful in the NOMINAL state."""
        return b"".join(self._lines)
