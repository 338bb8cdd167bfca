"""The antispam step of the MAIL and DATA answers: gather SPF or spamd's verdict, then decide.

Runs after the rest of policy has accepted the stage, so a refused sender or
message costs no DNS look-up and no scan. Who is skipped and what each result
does is the core's (core/antispam.py); this only does the I/O: the client's
POP3 grant, the SPF check, the scan of the message ingress sent along.
"""

from __future__ import annotations

import logging
from datetime import datetime

from opentelemetry import trace

from libs.common.contract.policy import PolicyDecision, PolicyQuery, canonical_ip
from services.policy.adapters.spamd import SpamdScanner
from services.policy.adapters.spf import SpfChecker
from services.policy.adapters.stores import GrantStore
from services.policy.core import PolicyRules, Pop3Grant
from services.policy.core import antispam as core

log = logging.getLogger(__name__)


class AntispamChecks:
    def __init__(
        self,
        rules: PolicyRules,
        spf: SpfChecker | None,
        spamd: SpamdScanner | None,
        grants: GrantStore | None,
    ) -> None:
        self._rules = rules
        self._spf = spf
        self._spamd = spamd
        self._grants = grants

    async def review(
        self, query: PolicyQuery, decision: PolicyDecision, now: datetime, body: bytes | None
    ) -> PolicyDecision:
        reviewed = await self._review(query, decision, now, body)
        found = reviewed.antispam
        if found is not None:
            # On the policy span, so the message's trace says why it was tagged or skipped.
            trace.get_current_span().set_attribute("mailbus.antispam", found.summary())
        return reviewed

    async def _review(
        self, query: PolicyQuery, decision: PolicyDecision, now: datetime, body: bytes | None
    ) -> PolicyDecision:
        rules = self._rules.antispam
        if not core.wanted(query, rules, decision):
            return decision
        group = self._rules.allowed_ip_group
        reason = core.skip_reason(query, rules, group, now)
        if reason is None and self._grants is not None:
            reason = core.skip_reason(query, rules, group, now, await self._grant(query))
        if reason is not None:
            return core.skipped(decision, reason)
        if query.stage == "mail":
            if self._spf is None:
                return decision
            result = await self._spf.check(
                query.session.client_ip, query.mail_from or "", query.session.helo
            )
            log.info(
                "spf %s for %s from %s (%s)",
                result.result,
                ascii(result.sender),
                result.client_ip,
                ascii(result.explanation),
            )
            return core.after_spf(decision, result, rules)
        if self._spamd is None:
            return decision
        verdict = core.unscanned_verdict(query, rules, body is not None)
        if verdict is None:
            assert body is not None
            scanned = await self._spamd.scan(body)
            if isinstance(scanned, str):
                verdict = core.failed_scan(scanned, rules)
            else:
                verdict = core.verdict_of(*scanned, rules)
        return core.after_scan(decision, verdict, rules)

    def close(self) -> None:
        if self._spf is not None:
            self._spf.close()

    async def _grant(self, query: PolicyQuery) -> Pop3Grant | None:
        """The client's grant; none when POP3-before-SMTP is off or the bucket is unreadable
        (then the sender is checked: a check too many is safer than one too few)."""
        if self._grants is None or self._rules.pop3_grant is None:
            return None
        ip = canonical_ip(query.session.client_ip)
        if ip is None:
            return None
        try:
            return await self._grants.get(ip)
        except Exception as exc:
            log.warning("pop3 grants unreadable: %s: %s", type(exc).__name__, exc)
            return None
