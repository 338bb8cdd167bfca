"""Blocked client addresses: what a block is, when one starts, and what it refuses.

A block is stored in a KV bucket shared by every replica (so every ingress
refuses the address) with its end written in it: the core decides with `now`
whether it still holds; the key's TTL only cleans up, like POP3 grants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from libs.common.contract.policy import PolicyDecision
from services.policy.core.rules import SecurityLimits

HARVEST_RULE = "directory_harvest"


class BlockFormatError(ValueError):
    """A stored block that cannot be read; it blocks nothing."""


@dataclass(frozen=True)
class Block:
    client_ip: str  # canonical
    reason: str
    rule: str
    start: datetime
    end: datetime

    def active_at(self, now: datetime) -> bool:
        return self.start <= now < self.end

    @property
    def event_id(self) -> str:
        """One id per block: a retried publish of the same block is deduplicated."""
        return _event_id("block", self.client_ip, self.start)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "client_ip": self.client_ip,
                "reason": self.reason,
                "rule": self.rule,
                "start": self.start.isoformat(),
                "end": self.end.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Block:
        try:
            raw = json.loads(data)
            block = cls(
                client_ip=str(raw["client_ip"]),
                reason=str(raw["reason"]),
                rule=str(raw["rule"]),
                start=datetime.fromisoformat(raw["start"]),
                end=datetime.fromisoformat(raw["end"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BlockFormatError(f"unreadable block: {exc}") from None
        if block.start.tzinfo is None or block.end.tzinfo is None:
            raise BlockFormatError("block times without a time zone")
        return block


def unblock_event_id(client_ip: str, block_start: datetime) -> str:
    """The id of lifting the block that began at `block_start`: lifted once, recorded once."""
    return _event_id("unblock", client_ip, block_start)


def _event_id(kind: str, client_ip: str, start: datetime) -> str:
    address = "".join(c if c.isalnum() else "-" for c in client_ip)
    return f"{kind}.{address}.{start.astimezone(UTC).strftime('%Y%m%dT%H%M%S%f')}"


def harvest_block(
    client_ip: str, unknown: int, limits: SecurityLimits, now: datetime
) -> Block | None:
    """The block `unknown` unknown local recipients in the window earn, if any."""
    limit = limits.max_unknown_recipients
    if limit <= 0 or unknown < limit or limits.exempts(client_ip):
        return None
    return Block(
        client_ip=client_ip,
        reason=f"{unknown} unknown local recipients within an hour (directory harvest)",
        rule=HARVEST_RULE,
        start=now,
        end=now + limits.block_for,
    )


def blocked(block: Block) -> PolicyDecision:
    """The refusal of every connection (and further command) from a blocked address.

    421, not 5xx: a legitimate server behind that address retries after the block
    instead of bouncing its mail.
    """
    until = block.end.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return PolicyDecision(
        action="disconnect",
        code=421,
        status="4.7.0",
        message=f"{block.client_ip} is blocked until {until}: {block.reason}",
        rule=block.rule,
    )
