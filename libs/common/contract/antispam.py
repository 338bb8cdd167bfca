"""What policy's antispam checks found: the SPF result of MAIL, the spamd verdict of DATA.

Policy puts them in its MAIL and DATA decisions; ingress writes them into the
message's trace headers and into `MessageReceived.antispam`, so `mailbus
queue show` and the trace say why a message was tagged. Pure data, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# The results of RFC 7208 section 2.6.
SpfCode = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
SpamCode = Literal["clean", "spam", "unscanned"]
# Why a message was not scanned.
Unscanned = Literal["too_big", "not_sent", "spamd_unavailable", "spamd_timeout"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SpfResult(_Model):
    """One SPF check (RFC 7208) of the MAIL FROM identity, or of HELO for `<>`."""

    result: SpfCode
    identity: Literal["mailfrom", "helo"]
    sender: str  # the checked identity: the address, or postmaster@<helo>
    domain: str
    client_ip: str
    helo: str = ""
    explanation: str = ""  # pyspf's reason, for the header comment and logs


class SpamVerdict(_Model):
    """spamd's score of the message, or why it was not scanned."""

    result: SpamCode
    score: float | None = None
    tag_score: float = 5.0  # antispam.spam_tag_score: the `required=` of X-Spam-Status
    tests: tuple[str, ...] = ()  # the SpamAssassin rules that hit
    unscanned: Unscanned | None = None

    @property
    def flagged(self) -> bool:
        return self.score is not None and self.score >= self.tag_score


class AntispamResults(_Model):
    """Everything the antispam checks said of one message; None: that check did not run.

    `skipped` names why neither ran (a trusted sender): "allowed_ip_group",
    "authenticated" or "pop3_before_smtp".
    """

    spf: SpfResult | None = None
    spam: SpamVerdict | None = None
    skipped: str | None = None

    def summary(self) -> str:
        """One line for the operator: `spf=pass spam=clean(1.2)`."""
        if self.skipped:
            return f"skipped ({self.skipped})"
        parts = []
        if self.spf is not None:
            parts.append(f"spf={self.spf.result}")
        if self.spam is not None:
            score = f"{self.spam.score:.1f}" if self.spam.score is not None else ""
            why = self.spam.unscanned or score
            parts.append(f"spam={self.spam.result}({why})")
        return " ".join(parts) or "none"
