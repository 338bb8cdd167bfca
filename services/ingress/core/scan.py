"""What policy's DATA stage and the smuggling rule need of a message, read as it streams by.

The message is never whole in memory (it goes to a spool file as it
arrives), so its size, its Received count and its first bare line break or
NUL are taken from each piece on its way there. Pieces may split a line or a
CRLF anywhere; the result is the same as reading the whole message at once
(`count_received` and `smuggling.refusal`, which the tests compare it to).
"""

from __future__ import annotations

import re

from services.ingress.core import smuggling

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_RECEIVED = b"received:"


class ContentScan:
    def __init__(self) -> None:
        self.size = 0
        self.received_headers = 0
        self._bare: str | None = None
        self._nul = False
        self._pending_cr = False  # the last piece ended in CR: bare or not, the next one says
        self._in_header = True
        self._line_head = b""  # the first bytes of the header line being read

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if not self._nul and b"\x00" in data:
            self._nul = True
        if self._bare is None:
            self._scan_line_breaks(data)
        if self._in_header:
            self._scan_header(data)

    def _scan_line_breaks(self, data: bytes) -> None:
        window = (b"\r" if self._pending_cr else b"") + data
        self._pending_cr = window.endswith(b"\r")
        if self._pending_cr:
            window = window[:-1]
        found = _BARE.search(window)
        if found is not None:
            self._bare = "CR" if found.group() == b"\r" else "LF"

    def _scan_header(self, data: bytes) -> None:
        *complete, rest = data.split(b"\n")
        for part in complete:
            line = (self._line_head + part).rstrip(b"\r")
            self._line_head = b""
            if not line:
                self._in_header = False  # the blank line that ends the header section
                return
            if line[:9].lower() == _RECEIVED:
                self.received_headers += 1
        # Enough of an unfinished line to recognise "Received:" (and a lone CR) later.
        self._line_head = (self._line_head + rest)[: len(_RECEIVED) + 1]

    def finish(self) -> None:
        """The message is over: a CR it ended in had no LF after it."""
        if self._pending_cr and self._bare is None:
            self._bare = "CR"
        self._pending_cr = False
        if self._in_header and self._line_head.rstrip(b"\r")[:9].lower() == _RECEIVED:
            self.received_headers += 1
        self._line_head = b""
        self._in_header = False

    def refusal(self) -> str | None:
        """As smuggling.refusal of the whole message: None when it may be accepted."""
        if self._bare is not None:
            return smuggling.BARE_NEWLINE_REPLY.format(what=self._bare)
        if self._nul:
            return smuggling.NUL_REPLY
        return None
