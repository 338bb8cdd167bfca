"""Looking up what the core's `needs` asks for, and recording what a decision caused.

Lookups run concurrently; a shared-state read that fails raises
`LimitsUnavailable`, which the endpoint turns into a temporary refusal: a
limit that cannot be read is not taken to be under its bound.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from libs.common.contract import subjects
from libs.common.contract.policy import PolicyDecision, PolicyQuery
from services.policy.adapters.blocks import BlockStore
from services.policy.adapters.connections import Connections
from services.policy.adapters.counters import SlidingCounters
from services.policy.adapters.dns import SenderDomainResolver
from services.policy.adapters.stores import FailedLoginCounter
from services.policy.core import (
    HOUR,
    NO_FACTS,
    Facts,
    LimitsUnavailable,
    Needs,
    PolicyRules,
    counts_message,
    counts_unknown,
    harvest_answer,
    harvest_block,
)
from services.policy.core.security import client_of

log = logging.getLogger(__name__)


class FactFinder:
    def __init__(
        self,
        rules: PolicyRules,
        counters: SlidingCounters | None = None,
        blocks: BlockStore | None = None,
        connections: Connections | None = None,
        dns: SenderDomainResolver | None = None,
        failures: FailedLoginCounter | None = None,
    ) -> None:
        self._rules = rules
        self._counters = counters
        self._blocks = blocks
        self._connections = connections
        self._dns = dns
        self._failures = failures

    def use(self, rules: PolicyRules, dns: SenderDomainResolver | None) -> None:
        """A new configuration revision's rules and resolver, for the next lookups."""
        self._rules, self._dns = rules, dns

    async def gather(self, needs: Needs, query: PolicyQuery) -> Facts:
        ip = client_of(query)
        if ip is None:
            return NO_FACTS
        lookups: dict[str, Any] = {}
        if needs.block and self._blocks is not None:
            lookups["block"] = self._blocks.get(ip)
        if needs.connections and self._connections is not None:
            lookups["connections"] = self._connections.count(ip, query.held)
        if needs.messages and self._counters is not None:
            lookups["messages"] = self._counters.get(subjects.message_count_key(ip))
        if needs.failed_logins and self._failures is not None:
            lookups["failed_logins"] = self._failures.get(ip)
        if needs.sender_domain is not None and self._dns is not None:
            lookups["sender_domain"] = self._dns.check(needs.sender_domain)
        if not lookups:
            return NO_FACTS
        results = await asyncio.gather(*lookups.values(), return_exceptions=True)
        found: dict[str, Any] = {}
        for name, result in zip(lookups, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("%s of %s unreadable: %s: %s", name, ip, type(result).__name__, result)
                raise LimitsUnavailable(name) from result
            found[name] = result
        return replace(NO_FACTS, **found)

    async def record(
        self, query: PolicyQuery, decision: PolicyDecision, now: datetime
    ) -> PolicyDecision:
        """Count what the decision caused; the decision that stands after it.

        A count that cannot be written is logged and the decision stands: the
        client is not refused because a counter was briefly out of reach.
        """
        limits = self._rules.limits
        ip = client_of(query)
        if ip is None or self._counters is None:
            return decision
        if counts_message(query, decision, limits):
            try:
                await self._counters.add(subjects.message_count_key(ip), now)
            except Exception as exc:
                log.warning("message from %s not counted: %s: %s", ip, type(exc).__name__, exc)
            return decision
        if counts_unknown(query, decision, limits):
            try:
                return await self._harvest(ip, decision, now)
            except Exception as exc:
                log.warning("unknown recipient from %s not counted: %s", ip, exc)
        return decision

    async def _harvest(self, ip: str, decision: PolicyDecision, now: datetime) -> PolicyDecision:
        assert self._counters is not None
        key = subjects.unknown_recipients_key(ip)
        count = await self._counters.add(key, now)
        block = harvest_block(ip, count.total(HOUR, now), self._rules.limits, now)
        if block is None or self._blocks is None:
            return decision
        in_force, made = await self._blocks.impose(block, now)
        if made:
            log.warning(
                "blocked %s until %s: %s (rule=%s)",
                ip,
                in_force.end.isoformat(timespec="seconds"),
                in_force.reason,
                in_force.rule,
            )
            # The count that led to the block is spent: after the block the address
            # starts again from nothing, rather than being blocked again at once.
            await self._counters.reset(key)
        return harvest_answer(decision)
