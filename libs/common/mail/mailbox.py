"""Local mailboxes on JetStream: delivery appends, the POP3 listener lists, reads and deletes.

A mailbox is one subject of the MAILBUS_MAILBOXES stream, holding one small
index entry per message in arrival order; the message itself is an object in
the MAILBOX_BODIES_BUCKET object store (a message may be larger than one NATS
message may be). Writes are ordered so that a crash never leaves an entry
without its message: the object is stored first, then the entry; deletion
removes the entry first, then the object. An object left behind by a crash is
only unreferenced storage.

Appends are idempotent: an entry is published with Nats-Msg-Id derived from
the queue id and the recipient, and the object's name is that same uid, so a
redelivered delivery job neither duplicates the entry nor the object.

A POP3 session holds its mailbox's lock (`MailboxLock`) for as long as it is
open, so two sessions never see and delete the same messages.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError
from nats.js.object_store import ObjectStore

from libs.common.contract import subjects
from libs.common.contract.records import Record

log = logging.getLogger(__name__)

# A mailbox listing reads this many entries at most: a bound on one round of work,
# far above what anyone keeps on a POP3 server.
MAX_ENTRIES = 100_000
# JSStreamWrongLastSequenceErrF (and its constant form): someone else holds the lock.
_WRONG_LAST_SEQUENCE = (10071, 10164)
_NO_MESSAGE_FOUND = 10057
LOCK_TTL_S = 60.0


class MailboxError(Exception):
    """The store could not do what was asked; the caller defers or answers -ERR."""


def message_uid(queue_id: str, recipient: str) -> str:
    """Unique, stable, and a valid POP3 unique-id (RFC 1939: 1-70 chars in 0x21-0x7E)."""
    digest = hashlib.sha256(recipient.lower().encode()).hexdigest()[:12]
    return f"{queue_id}.{digest}"


class MailboxEntry(Record):
    """One message of a mailbox; `seq` is its entry's place in the stream (0 until stored).

    The entry's value is {"uid", "size", "queue_id"} in that order; `seq` is not in
    it, the stream gives it.
    """

    seq: int = 0
    uid: str
    size: int
    queue_id: str  # required when read, as it always was

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"seq"})

    @classmethod
    def read(cls, seq: int, data: bytes) -> MailboxEntry | None:
        """The entry stored at `seq`, or None when its value cannot be read."""
        try:
            return cls.decode(data).model_copy(update={"seq": seq})
        except ValueError:
            return None


class MailboxStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._bodies: ObjectStore | None = None

    async def _objects(self) -> ObjectStore:
        if self._bodies is None:
            self._bodies = await self._js.object_store(subjects.MAILBOX_BODIES_BUCKET)
        return self._bodies

    @staticmethod
    def _object_name(address: str, uid: str) -> str:
        return f"{subjects.token(address.lower())}/{uid}"

    async def append(self, address: str, queue_id: str, content: bytes) -> MailboxEntry:
        """Store one message; returns its entry (the first one's, for a repeated append)."""
        uid = message_uid(queue_id, address)
        objects = await self._objects()
        await objects.put(self._object_name(address, uid), content)
        entry = MailboxEntry(seq=0, uid=uid, size=len(content), queue_id=queue_id)
        ack = await self._js.publish(
            subjects.mailbox_subject(address),
            entry.encode(),
            headers={"Nats-Msg-Id": f"mbox.{uid}"},
        )
        return MailboxEntry(seq=ack.seq, uid=uid, size=entry.size, queue_id=queue_id)

    async def entries(self, address: str) -> list[MailboxEntry]:
        """The mailbox's messages, oldest first."""
        subject = subjects.mailbox_subject(address)
        found: list[MailboxEntry] = []
        seq = 1
        for _ in range(MAX_ENTRIES):
            try:
                raw = await self._js.get_msg(
                    subjects.MAILBOXES_STREAM, seq=seq, subject=subject, next=True
                )
            except NotFoundError:
                break
            if raw.seq is None:
                break
            entry = MailboxEntry.read(raw.seq, raw.data or b"")
            if entry is None:
                log.warning("mailbox entry %d unreadable; skipped", raw.seq)
            else:
                found.append(entry)
            seq = raw.seq + 1
        return found

    async def size(self, address: str) -> int:
        return sum(entry.size for entry in await self.entries(address))

    async def read(self, address: str, entry: MailboxEntry) -> bytes:
        objects = await self._objects()
        try:
            result = await objects.get(self._object_name(address, entry.uid))
        except NotFoundError as exc:
            raise MailboxError(f"message {entry.uid} has no content") from exc
        data = result.data
        return data if isinstance(data, bytes) else b""

    async def delete(self, address: str, entry: MailboxEntry) -> None:
        """Entry first: once it is gone nobody can see the message, whatever happens next."""
        await _delete_seq(self._js, subjects.MAILBOXES_STREAM, entry.seq)
        objects = await self._objects()
        try:
            await objects.delete(self._object_name(address, entry.uid))
        except NotFoundError:
            pass
        except Exception as exc:
            log.warning("mailbox object %s left behind: %s", entry.uid, exc)

    async def lock(self, address: str, holder: str, ttl: float = LOCK_TTL_S) -> MailboxLock | None:
        """The mailbox's lock, or None when another session holds it."""
        subject = subjects.mailbox_lock_subject(address)
        seq = await _write_lock(self._js, subject, holder, expected=0, ttl=ttl)
        if seq is None:
            return None
        return MailboxLock(self._js, subject, holder, seq, ttl)


class MailboxLock:
    """Held while a POP3 session is open; refresh it well within its TTL."""

    def __init__(self, js: JetStreamContext, subject: str, holder: str, seq: int, ttl: float):
        self._js = js
        self._subject = subject
        self.holder = holder
        self._seq = seq
        self.ttl = ttl

    async def refresh(self) -> bool:
        """False when the lock was lost (it expired and someone else took it)."""
        seq = await _write_lock(self._js, self._subject, self.holder, self._seq, self.ttl)
        if seq is None:
            return False
        self._seq = seq
        return True

    async def release(self) -> None:
        # By sequence: if ours expired and another session took the lock, theirs stays.
        await _delete_seq(self._js, subjects.MAILBOX_LOCKS_STREAM, self._seq)


async def _delete_seq(js: JetStreamContext, stream: str, seq: int) -> None:
    """Delete one message; one that is gone already (a retry, a TTL) is no error."""
    try:
        await js.delete_msg(stream, seq)
    except APIError as exc:
        if exc.err_code != _NO_MESSAGE_FOUND:
            raise


async def _write_lock(
    js: JetStreamContext, subject: str, holder: str, expected: int, ttl: float
) -> int | None:
    headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(expected)}
    try:
        ack = await js.publish(subject, holder.encode(), headers=headers, msg_ttl=max(1.0, ttl))
    except APIError as exc:
        if exc.err_code in _WRONG_LAST_SEQUENCE:
            return None
        raise
    return ack.seq
