"""The upgrade step of `mailbus migrate` that moves bodies out of the old object store.

Versions before the MAILBUS_BODIES stream kept each body as an object named by its
queue id in nats-py's Object Store bucket OLD_BUCKET. A message queued before the
upgrade still has its body there, and the new readers look only in the stream, so
delivery would take the body for missing and drop the job. `mailbus migrate`
therefore copies every object still in the old bucket into the stream and removes
the bucket only once every copy is acknowledged: a failure part-way leaves the
bucket as it was, and the next run carries on.

Running it again is harmless: a body whose head is already in the stream is not
written a second time (the stream's copy may be newer, e.g. a message accepted
again after the upgrade). A body of a message that had already completed becomes an
orphan in the stream, which the queue's orphan sweep removes like any other.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from libs.common.mail.bodies import BodyStore

# The bucket's name in the versions that used it (its stream is OBJ_mailbus-bodies).
OLD_BUCKET = "mailbus-bodies"


@dataclass(frozen=True)
class Moved:
    copied: int
    skipped: int


async def old_bucket_present(js: JetStreamContext) -> bool:
    try:
        await js.stream_info(f"OBJ_{OLD_BUCKET}")
    except NotFoundError:
        return False
    return True


async def move_old_bodies(js: JetStreamContext) -> Moved | None:
    """Copy the old bucket's bodies into the stream, then delete the bucket.

    None when there is no old bucket (a fresh install, or already moved)."""
    try:
        old = await js.object_store(OLD_BUCKET)
    except BucketNotFoundError:
        return None
    try:
        objects = await old.list(ignore_deletes=True)
    except NotFoundError:
        objects = []  # an empty bucket
    bodies = BodyStore(js)
    copied = skipped = 0
    for info in objects:
        if info.deleted:
            continue
        if await bodies.exists(info.name):
            skipped += 1
            continue
        # Through a file, so a large body is never held whole in memory.
        with tempfile.TemporaryFile() as spool:
            await old.get(info.name, writeinto=spool)
            spool.seek(0)
            await bodies.put(info.name, spool)  # returns once JetStream has it all
        copied += 1
    await js.delete_object_store(OLD_BUCKET)
    return Moved(copied, skipped)
