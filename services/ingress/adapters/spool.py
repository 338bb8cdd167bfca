"""Where one message waits between its last byte and the store: a spooled temporary file.

Up to `IN_MEMORY` octets stay in memory, the rest goes to disk, so an upload
costs the same memory whatever its size. The store gets the Received header
followed by the content as one seekable binary file (`Body`).
"""

from __future__ import annotations

import io
import tempfile

from libs.common.contract.events import MessageReceived
from libs.common.mail.submission import MessageStore

# Small messages (most mail) never touch the disk.
IN_MEMORY = 256 * 1024


class Spool:
    def __init__(self) -> None:
        self._file: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(
            max_size=IN_MEMORY
        )
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        return self._file.write(data)

    def body(self, header: bytes) -> Body:
        """The message as the store keeps it: `header`, then the content."""
        self._file.seek(0)
        return Body(header, self._file, self.size)

    def close(self) -> None:
        self._file.close()


class Body(io.RawIOBase):
    """A header in memory followed by the spooled content, read as one file."""

    def __init__(
        self, header: bytes, content: tempfile.SpooledTemporaryFile[bytes], content_size: int
    ) -> None:
        super().__init__()
        self._header = header
        self._content = content
        self.size = len(header) + content_size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        head = len(self._header)
        if self._pos < head:
            n = min(len(view), head - self._pos)
            view[:n] = self._header[self._pos : self._pos + n]
        else:
            self._content.seek(self._pos - head)
            n = self._content.readinto(view)
        self._pos += n
        return n


async def accept(store: MessageStore, body: Body, event: MessageReceived) -> None:
    """Today's store takes the body as bytes, so it is read whole here, once; a store that
    takes a binary file gets `body` itself and the message never is whole in memory."""
    body.seek(0)
    await store.accept(body.read(), event)
