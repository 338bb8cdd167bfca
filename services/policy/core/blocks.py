"""Blocked client addresses: what a block is, when one starts, and what it refuses.

A block is stored in a KV bucket shared by every replica (so every ingress
refuses the address) with its end written in it: the core decides with `now`
whether it still holds; the key's TTL only cleans up, like POP3 grants.
"""

from __future__ import annotations

from datetime import UTC, datetime

from libs.common.contract import replies
from libs.common.contract.policy import PolicyDecision
from libs.common.contract.records import Record, ZonedTime
from services.policy.core.errors import BlockFormatError
from services.policy.core.rules import SecurityLimits

HARVEST_RULE = "directory_harvest"


class Block(Record):
    client_ip: str  # canonical
    reason: str
    rule: str
    start: ZonedTime
    end: ZonedTime

    unreadable = BlockFormatError

    def active_at(self, now: datetime) -> bool:
        return self.start <= now < self.end

    @property
    def event_id(self) -> str:
        """One id per block: a retried publish of the same block is deduplicated."""
        return _event_id("block", self.client_ip, self.start)


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
    """The refusal of every connection (and further command) from a blocked address."""
    return PolicyDecision.of(replies.blocked(block.client_ip, block.end, block.reason), block.rule)
