"""What an SMTP session and its listener's handler may use of each other, and the envelope.

aiosmtpd hands the handler its SMTP protocol object whole; the handler keeps
to `SmtpSession`, so the session's own state (its replies, its drain, the
library's internals) stays the session's. The session, in turn, calls the
handler only through `SessionHooks` and aiosmtpd's `handle_*` hooks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from aiosmtpd.smtp import Envelope
from opentelemetry.trace import Span

from libs.common.contract.antispam import AntispamResults
from libs.common.contract.events import TlsInfo
from libs.common.contract.policy import (
    HeldConnections,
    PolicyDecision,
    PolicyQuery,
    SessionLimits,
)
from libs.common.contract.policy import Session as PolicySession
from services.ingress.adapters.spool import Spool
from services.ingress.core import dsn
from services.ingress.core.scan import ContentScan


class IngressEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.policy_rules: list[str] = []
        # The recipients as the client wrote them, parallel to rcpt_tos (canonical).
        self.rcpt_sent: list[str] = []
        # Accepted RCPT commands, a mailbox named twice counted twice (max_recipients).
        self.rcpt_commands = 0
        # DSN (RFC 3461): per recipient, parallel to rcpt_tos; per message from MAIL.
        self.rcpt_dsn: list[dsn.RcptParams] = []
        self.dsn: dsn.MailParams = dsn.MailParams()
        # After DATA or BDAT LAST: the message (never whole in memory) and what was
        # learnt of it on its way into the spool.
        self.spool: Spool | None = None
        self.scan: ContentScan | None = None
        # Policy's antispam answer to MAIL: the SPF result, or why the checks are skipped.
        self.antispam: AntispamResults | None = None
        # Policy's decisions of the RCPTs pipelined behind MAIL, each with the query it
        # answers: used when the RCPT's own query turns out the same, in order.
        self.prefetched: list[tuple[PolicyQuery, PolicyDecision]] = []


class SmtpSession(Protocol):
    """What the handler may use of the session whose command it answers."""

    @property
    def session_id(self) -> str: ...

    @property
    def peer(self) -> tuple[str, int]:
        """The client's address and port (behind a PROXY header, the real client's)."""
        ...

    @property
    def data_size_limit(self) -> int | None:
        """The session's SIZE limit: the listener's, or what policy set at connect."""
        ...

    @property
    def dsn_parameters(self) -> tuple[str, ...]:
        """The DSN parameters of the MAIL or RCPT being handled, as the client wrote them."""
        ...

    @property
    def held(self) -> HeldConnections | None:
        """This instance's open connections from the client (None: not counted)."""
        ...

    @property
    def tls_info(self) -> TlsInfo | None:
        """None when the session is not encrypted."""
        ...

    @property
    def authenticated_as(self) -> str | None: ...

    def policy(self) -> PolicySession:
        """The session as policy's queries describe it."""
        ...

    def stage(self, name: str) -> AbstractContextManager[Span]:
        """A child span of the session; a session inside a stage is not idle."""
        ...

    @property
    def refusals_left(self) -> int:
        """Refused commands before the session closes (max_failed_commands); 0: no limit."""
        ...

    def pipelined_rcpts(self) -> tuple[str, ...]:
        """Recipients of RCPT commands buffered behind this MAIL, sure to reach policy."""
        ...

    def apply_limits(self, limits: SessionLimits | None) -> None: ...

    def refuse(self, decision: PolicyDecision) -> str:
        """The reply to send for policy's refusal (and the session ends after it if asked)."""
        ...

    def note_refusal(self, rule: str) -> None:
        """The rule of the refusal about to be sent, for the refusal metric and log."""
        ...

    async def read_credentials(self, mechanism: str, initial: str | None) -> tuple[str, str] | None:
        """AUTH's SASL exchange: (username, password), or None if the client was answered."""
        ...


class SessionHooks(Protocol):
    """What the session asks of its listener's handler besides aiosmtpd's `handle_*` hooks."""

    async def on_connect(self, server: SmtpSession) -> str | None:
        """None to greet; otherwise the reply to send before closing."""
        ...
