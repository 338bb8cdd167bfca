"""One sender per job across workers: a claim on the job's id before it is sent.

JetStream hands a job to one worker at a time, until it does not: a nats-server
that restarts after a SIGKILL can lose part of a consumer's delivery state and hand
a job that is being delivered to a second worker, and both then sent it (two copies
20-50 ms apart in the chaos runs). The redelivery guard cannot see this: the second
copy may count as a first delivery, and no result is recorded yet.

So a worker claims the job before sending it: a KV create of the job id in
DELIVERY_CLAIMS_BUCKET (a compare-and-set on "absent"), with a per-key TTL a little
above the jobs' ack_wait, renewed while the delivery lasts. Whoever finds the key
held leaves the job to its holder and asks for it again a little later; by then the
results are recorded (and the copy is acked without being sent), or the holder died
and its claim expired. A dead worker's claims need no clean-up: they expire, a
little after the consumer hands its jobs to someone else.

Cost: one KV write per job, before the SMTP transaction (one round trip), and one more
every third of the TTL for a delivery slower than that. A delivered job's claim is
left to expire (no second write); a job given back (nak) releases its claim at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.runtime import kv

log = logging.getLogger(__name__)

# How much longer than ack_wait a claim lives: a holder is taken for alive at least
# as long as the consumer takes it for alive.
CLAIM_MARGIN_S = 2.0
# Rounds against writers that are not holders (a claim's purge marker, an R3 leader
# refusing a concurrent conditional write): then the key is taken for held.
TAKE_ATTEMPTS = 8


@dataclass
class Claim:
    job_id: str
    token: bytes
    revision: int
    # Set once the job is acked: the claim is left to expire, blocking late copies.
    settled: bool = False


class JobClaims:
    def __init__(self, js: JetStreamContext, ack_wait: float, instance: str) -> None:
        self._bucket = kv.Bucket(js, subjects.DELIVERY_CLAIMS_BUCKET)
        self.ttl = ack_wait + CLAIM_MARGIN_S
        self._instance = instance

    async def take(self, job_id: str) -> Claim | None:
        """The claim on `job_id`, or None when another worker holds it."""
        token = f"{self._instance}/{uuid.uuid4().hex}".encode()
        last = 0
        for attempt in range(TAKE_ATTEMPTS):
            revision = await self._bucket.swap(job_id, token, last, self.ttl)
            if revision is not None:
                return Claim(job_id, token, revision)
            last, live = await self._bucket.last_value_revision(job_id)
            if live:
                return None  # a live claim: someone is sending it
            # Absent but not at revision 0 (a purge marker), or a write that lost a race.
            await kv.backoff(attempt)
        return None

    @contextlib.asynccontextmanager
    async def claimed(self, job_id: str) -> AsyncIterator[Claim | None]:
        """Hold the job's claim (renewed) for the block; None: another worker has it."""
        claim = await self.take(job_id)
        if claim is None:
            yield None
            return
        renewal = asyncio.create_task(self._renew(claim), name="delivery-claim")
        try:
            yield claim
        finally:
            renewal.cancel()
            if not claim.settled:
                # Given back (nak, failure): the next copy need not wait for the TTL.
                with contextlib.suppress(Exception):
                    await self._bucket.purge(job_id)

    async def _renew(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                revision = await self._bucket.swap(
                    claim.job_id, claim.token, claim.revision, self.ttl
                )
            except Exception as exc:  # NATS away: the next round tries again
                log.warning("delivery: claim on %s not renewed: %s", claim.job_id, exc)
                continue
            if revision is None:
                # Only after our claim expired (NATS away longer than the TTL) can another
                # worker have taken it; this delivery is already under way.
                log.warning("delivery: claim on %s lost while sending it", claim.job_id)
                return
            claim.revision = revision
