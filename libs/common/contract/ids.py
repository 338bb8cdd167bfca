"""Queue ids: unique, sortable by arrival, safe as one NATS subject token.

Like Postfix's long queue ids they carry their arrival time, so `mailbus queue
list` sorts naturally and an operator can guess a message's age from its id.
"""

from __future__ import annotations

import hashlib
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_queue_id(now: float | None = None) -> str:
    """48 bits of milliseconds then 80 random bits: 26 characters, ULID layout."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return _b32(millis, 10) + _b32(rand, 16)


def derived_queue_id(seed: str, at: float) -> str:
    """A queue id that is a function of `seed`: the same trigger always names the same
    report, so a redelivered trigger is deduplicated instead of sending a second one.

    The time part comes from `at` (the trigger's time), keeping ids sortable by age.
    """
    millis = int(at * 1000) & ((1 << 48) - 1)
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:10], "big")
    return _b32(millis, 10) + _b32(digest, 16)
