"""The AUTH stage's password check, made to hold under a flood of wrong passwords.

In this order, so that a flood costs at most `limit` checks per address and
hour and cannot crowd out a login from elsewhere:

1. `decide` without the password: a locked address (or a login that is wrong
   for any other reason) costs no check at all;
2. at most one check in flight per client address: the next one waits for it,
   until its deadline;
3. a failure is reserved with compare-and-set before the password is looked
   at, so concurrent attempts on any replica never run past the limit;
4. the check waits in the bounded, deadline-aware queue of `PasswordChecker`,
   ordered by the address's failures this hour plus its logins waiting in
   step 2, for one of its niced worker processes (one kept for addresses at
   zero on both);
5. a match, or a check that never ran, gives the reservation back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime

from libs.common.contract import replies
from libs.common.contract.policy import PolicyDecision, PolicyQuery
from libs.common.mail import maillines
from libs.common.runtime import maillog
from services.policy.adapters.passwords import PasswordChecker, Verdict
from services.policy.adapters.stores import FailedLoginCounter
from services.policy.core import Facts, LimitsUnavailable, PolicyRules, decide
from services.policy.core.security import auth_limit

log = logging.getLogger(__name__)

BUSY = PolicyDecision.of(replies.LOGINS_BUSY, "auth_busy")
# The share of policy.timeout kept for the answer to travel back: a login that waits
# longer for its check gets "busy" instead of an answer ingress no longer waits for.
ANSWER_MARGIN = 0.2


class AddressGate:
    """One lock per client address that has a login being checked; forgotten when idle."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def turn(self, key: str, deadline: float) -> AsyncIterator[bool]:
        """Yields True holding the address's lock, False if the deadline came first."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        held = False
        try:
            try:
                await asyncio.wait_for(lock.acquire(), max(0.0, deadline - time.monotonic()))
                held = True
            except TimeoutError:
                pass
            yield held
        finally:
            if held:
                lock.release()
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def behind(self, key: str) -> int:
        """Logins from `key` waiting for its lock: a client that logs in once at a time has none."""
        return max(0, self._locks.get(key, (None, 0))[1] - 1)

    def __len__(self) -> int:
        return len(self._locks)


class LoginChecker:
    def __init__(
        self,
        rules: PolicyRules,
        clock: Callable[[], datetime],
        passwords: PasswordChecker | None,
        failures: FailedLoginCounter | None,
        timeout_s: float,
    ) -> None:
        self._rules = rules
        self._clock = clock
        self._passwords = passwords
        self._failures = failures
        self._timeout_s = timeout_s
        self._gate = AddressGate()

    async def authenticate(
        self, query: PolicyQuery, facts: Facts, arrived: float
    ) -> PolicyDecision:
        """The AUTH decision; `arrived` is when the request came in (time.monotonic())."""
        decision = decide(query, self._rules, self._clock(), facts)
        if decision.rule != "auth_failed":
            return decision
        # Only a login `decide` would accept with the right password gets here.
        # What is not done by then is answered "busy" while ingress still listens.
        deadline = arrived + self._timeout_s * (1 - ANSWER_MARGIN)
        ip = query.session.client_ip
        async with self._gate.turn(ip, deadline) as held:
            if not held:
                return BUSY
            return await self._reserved_check(query, facts, deadline)

    async def _reserved_check(
        self, query: PolicyQuery, facts: Facts, deadline: float
    ) -> PolicyDecision:
        ip = query.session.client_ip
        failures = self._failures
        failed = facts.failed_logins
        if failures is not None:
            try:
                reservation = await failures.reserve(
                    ip, auth_limit(query, self._rules.limits), self._clock()
                )
            except Exception as exc:
                log.warning("failed logins of %s unwritable: %s: %s", ip, type(exc).__name__, exc)
                raise LimitsUnavailable("failed_logins") from exc
            if not reservation.granted:
                # Another attempt (on any replica) used the last one up since the read.
                facts = replace(facts, failed_logins=reservation.count)
                return decide(query, self._rules, self._clock(), facts)
            failed = reservation.count
        # Behind other checks: an address by its failures this hour and by its logins
        # waiting at the gate, so that when a flood begins (no failure anywhere yet)
        # its first attempts still go after a login from an address making just one.
        before = failed.count - 1 if failed else 0
        verdict = await self._check(query, before + self._gate.behind(ip), deadline)
        if verdict is Verdict.MISMATCH:
            maillog.emit(maillines.sasl_failed(ip, query.mechanism or "", query.username))
            if failed is not None:
                # Detail: the mail log has the failure's own line, above.
                log.debug(
                    "failed login from %s as %r (%d from there since %s)",
                    ip,
                    query.username,
                    failed.count,
                    failed.first_at.isoformat(timespec="seconds"),
                )
            return decide(query, self._rules, self._clock(), facts)
        if failures is not None:
            await self._release(failures, ip)
        if verdict is Verdict.MATCH:
            return decide(query, self._rules, self._clock(), replace(facts, password_ok=True))
        log.warning("login from %s not checked: %s", ip, verdict.value)
        return BUSY

    async def _check(self, query: PolicyQuery, priority: int, deadline: float) -> Verdict:
        if self._passwords is None:
            return Verdict.MISMATCH
        account = self._rules.directory.login(query.username or "")
        # Unknown accounts are checked too (against a dummy): same time, nothing learnt.
        stored = account.password_hash if account is not None else None
        return await self._passwords.verify(stored, query.password or "", deadline, priority)

    async def _release(self, failures: FailedLoginCounter, ip: str) -> None:
        try:
            await failures.release(ip, self._clock())
        except Exception as exc:
            # The reservation then stands as a failure until its window ends: the
            # safe side of a limit, and logged.
            log.warning("failed login of %s not given back: %s: %s", ip, type(exc).__name__, exc)
