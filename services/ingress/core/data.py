"""The message of one DATA command, assembled from what the wire delivers, within bounds.

The reader hands over pieces: a whole line ending in CRLF, or a fragment of a
line too long for its buffer. Each piece goes on at once, dot-stuffing undone,
to the sink (the session's spool file) and through a `ContentScan`, so the
assembler itself holds no part of the message, whatever its size. Once the
message is over `size_limit` (or a line over `line_limit`) nothing more goes
to the sink: the rest is only counted and the end-of-data line looked for.

The size is counted as RFC 1870 defines it: CRLFs included, the quoting dots
of dot-stuffed lines and the final `.` line not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from services.ingress.core.scan import ContentScan

END_OF_DATA = b".\r\n"


class DataState(Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the line limit
    TOO_MUCH = "too_much"  # the message over the size limit (wins over TOO_LONG)


class Sink(Protocol):
    """Where the content goes: a file opened for writing, or a BytesIO in tests."""

    def write(self, data: bytes, /) -> int: ...


@dataclass
class DataAssembler:
    size_limit: int | None  # None or 0: no limit
    line_limit: int
    sink: Sink
    state: DataState = DataState.NOMINAL
    size: int = 0
    scan: ContentScan = field(default_factory=ContentScan)
    _line_length: int = 0  # raw octets of the line being read so far

    def feed(self, piece: bytes) -> bool:
        """Take one piece; True when it is the end-of-data line (which is not content)."""
        starts_line = self._line_length == 0
        if starts_line and piece == END_OF_DATA:
            self.scan.finish()
            return True
        self._line_length += len(piece)
        content = piece[1:] if starts_line and piece.startswith(b".") else piece
        self.size += len(content)
        if self.size_limit and self.size > self.size_limit:
            self.state = DataState.TOO_MUCH
        elif self._line_length > self.line_limit and self.state is DataState.NOMINAL:
            self.state = DataState.TOO_LONG
        if self.state is DataState.NOMINAL:
            self.sink.write(content)
            self.scan.feed(content)
        if piece.endswith(b"\r\n"):
            self._line_length = 0
        return False


@dataclass
class ChunkAssembler:
    """The message of one BDAT transaction (RFC 3030): chunks of raw octets, no
    dot-stuffing and no end-of-data line, counted against the size as they arrive."""

    size_limit: int | None  # None or 0: no limit
    sink: Sink
    state: DataState = DataState.NOMINAL
    size: int = 0
    scan: ContentScan = field(default_factory=ContentScan)

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size_limit and self.size > self.size_limit:
            self.state = DataState.TOO_MUCH
        if self.state is DataState.NOMINAL:
            self.sink.write(piece)
            self.scan.feed(piece)

    def finish(self) -> None:
        self.scan.finish()
