"""Every refusal one session sends: counted by stage and rule, logged, summed as failures.

All replies pass through `IngressSMTP.push`, so this sees policy's refusals
(their rule noted by the caller), ingress's own and aiosmtpd's alike.
"""

from __future__ import annotations

import logging

from libs.common.runtime.metrics import SMTPD_REFUSALS, SMTPD_REJECTED_BY_CODE
from services.ingress.core.refusals import counts_as_failure, library_rule, reply_code

log = logging.getLogger(__name__)


class Refusals:
    def __init__(self, session_id: str, max_failed_commands: int = 0) -> None:
        self.session_id = session_id
        self.client = ""
        self.max_failed_commands = max_failed_commands
        self.stage = "connect"
        self.failed = 0
        self._rule: str | None = None

    def command(self, name: str) -> None:
        self.stage = name.lower()
        self._rule = None

    def note(self, rule: str) -> None:
        """The rule of the refusal about to be sent."""
        self._rule = rule

    def count(self, rule: str) -> None:
        """A refusal without a reply (a failed TLS handshake): the metric only."""
        SMTPD_REFUSALS.labels(self.stage, rule).inc()

    def sent(self, reply: str) -> bool:
        """Account for one reply line; True when it makes the failures reach the limit."""
        rule, self._rule = self._rule, None
        code = reply_code(reply)
        if code < 400:
            return False
        rule = rule or library_rule(reply)
        SMTPD_REFUSALS.labels(self.stage, rule).inc()
        SMTPD_REJECTED_BY_CODE.labels(str(code)).inc()
        # The mail log's reject line comes from policy (one per refusal); this is detail.
        log.debug(
            "session %s: %s refused: rule=%s client=%s reply=%r",
            self.session_id,
            self.stage,
            rule,
            self.client,
            reply,
        )
        if not counts_as_failure(reply):
            return False
        self.failed += 1
        return self.max_failed_commands > 0 and self.failed >= self.max_failed_commands
