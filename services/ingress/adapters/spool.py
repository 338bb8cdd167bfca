"""Where one message waits between its last byte and the store: a spooled temporary file.

Up to `IN_MEMORY` octets stay in memory, the rest goes to disk, so an upload
costs the same memory whatever its size. The store reads the file a chunk at
a time (`MessageStore.accept` takes a binary file and a prefix), so the
message is never whole in memory on its way to the bus either.
"""

from __future__ import annotations

import tempfile
from collections.abc import Coroutine
from typing import BinaryIO, cast

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
        # Set once an acceptance reads the file: then it closes it, not the session.
        self.handed_over = False

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        return self._file.write(data)

    def head(self, limit: int) -> bytes:
        """The first `limit` octets (all of a smaller message)."""
        self._file.seek(0)
        return self._file.read(limit)

    def read_from(self, offset: int) -> bytes:
        """From `offset` to the end, as bytes: only for what is known to be small."""
        self._file.seek(offset)
        return self._file.read()

    def file_from(self, offset: int) -> BinaryIO:
        """The content from `offset` on, as a file for the store to read."""
        self._file.seek(offset)
        return cast(BinaryIO, self._file)

    def close(self) -> None:
        self._file.close()

    def release(self) -> None:
        """The session is done with the spool: closed unless an acceptance has it."""
        if not self.handed_over:
            self.close()


def accept(
    store: MessageStore, body: Spool, offset: int, prefix: bytes, event: MessageReceived
) -> Coroutine[None, None, None]:
    """`prefix` (trace headers, the message's own header section), then the spooled
    content from `offset`: durable once the coroutine returns. The spool is the
    acceptance's from now on (it may outlive a client that hangs up), which closes it."""
    body.handed_over = True
    return _accept(store, body, offset, prefix, event)


async def _accept(
    store: MessageStore, body: Spool, offset: int, prefix: bytes, event: MessageReceived
) -> None:
    try:
        await store.accept(body.file_from(offset), event, prefix)
    finally:
        body.close()
