"""The replies mailbus sends to SMTP clients, in one table: ingress's own and policy's.

Policy decides which reply a command gets and ingress sends it, so the texts are
part of the contract between them and live here, not in either service. Every
2xx/4xx/5xx reply carries an RFC 3463 enhanced status code; `DEFAULT_STATUS`
is the one a basic code gets when nothing more precise is known (a reply
aiosmtpd wrote without one, a remote server's reply delivery reads). Replies
with a parameter are small functions; everything else is a named constant.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class SmtpReply:
    code: int
    status: str  # RFC 3463 enhanced status code
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


# The usual enhanced status of each basic reply code (RFC 5248's registry), the only
# such table in the code base. Other codes fall back to X.0.0.
DEFAULT_STATUS: dict[int, str] = {
    211: "2.0.0",
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.5.0",
    421: "4.3.2",  # system not accepting network messages
    450: "4.2.0",  # mailbox unavailable
    451: "4.3.0",  # local error in processing
    452: "4.3.1",  # insufficient system storage
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    521: "5.3.2",
    530: "5.7.0",
    534: "5.7.9",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    551: "5.1.6",  # user not local
    552: "5.3.4",  # the only 552 mailbus sends: message too big
    553: "5.1.3",  # mailbox name not allowed
    554: "5.0.0",  # transaction failed
    555: "5.5.4",
}


# --- ingress: the session and the queue ------------------------------------------------

SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down, closing transmission channel")
INTERNAL_ERROR = SmtpReply(451, "4.3.0", "Internal error, try again later")
QUEUE_UNAVAILABLE = SmtpReply(451, "4.3.0", "Queue unavailable, try again later")
LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Line too long (see RFC 5321 section 4.5.3.1.6)")


def queued(qid: str) -> SmtpReply:
    return SmtpReply(250, "2.0.0", f"Ok: queued as {qid}")


def too_big(limit: int) -> SmtpReply:
    """SIZE= at MAIL or the message itself past max_message_size (RFC 1870's 552 5.3.4)."""
    return SmtpReply(552, "5.3.4", f"Message size exceeds the limit of {limit} bytes")


# --- policy: accepted ------------------------------------------------------------------

OK = SmtpReply(250, "2.0.0", "Ok")
SENDER_OK = SmtpReply(250, "2.1.0", "Ok")
RECIPIENT_OK = SmtpReply(250, "2.1.5", "Ok")
AUTHENTICATED = SmtpReply(235, "2.7.0", "Authentication successful")

# --- policy: its own state out of reach (the client tries again) -----------------------

POLICY_UNAVAILABLE = SmtpReply(451, "4.3.0", "Policy service unavailable, try again later")
LIMITS_UNAVAILABLE = SmtpReply(451, "4.3.0", "Limits cannot be checked now, try again later")
GRANTS_UNAVAILABLE = SmtpReply(
    451, "4.3.0", "Relay permission cannot be checked now, try again later"
)

# --- policy: AUTH ----------------------------------------------------------------------

UNKNOWN_MECHANISM = SmtpReply(504, "5.5.4", "Unrecognized authentication type")
ENCRYPTION_REQUIRED = SmtpReply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
ALREADY_AUTHENTICATED = SmtpReply(503, "5.5.1", "Already authenticated")
AUTH_FAILED = SmtpReply(535, "5.7.8", "Authentication credentials invalid")


def too_many_failed_logins(ip: str) -> SmtpReply:
    return SmtpReply(454, "4.7.0", f"Too many failed logins from {ip}, try again later")


# Policy had no time to check the password (too many logins waiting, or one from the
# same address still being checked): temporary, so the client tries again.
LOGINS_BUSY = SmtpReply(454, "4.7.0", "Too many logins in progress, try again later")


# --- policy: MAIL ----------------------------------------------------------------------

MAIL_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: MAIL FROM:<address>")


def bad_sender(reason: str) -> SmtpReply:
    return SmtpReply(501, "5.1.7", f"Bad sender address syntax: {reason}")


def sender_domain_tempfail(address: str) -> SmtpReply:
    return SmtpReply(
        451,
        "4.4.3",
        f"<{address}>: Sender address rejected: Domain lookup failed, try again later",
    )


def sender_domain_missing(address: str) -> SmtpReply:
    return SmtpReply(550, "5.1.8", f"<{address}>: Sender address rejected: Domain not found")


def sender_domain_null_mx(address: str) -> SmtpReply:
    """RFC 7505 section 4.2: a domain with a null MX sends no mail either."""
    return SmtpReply(
        550, "5.7.27", f"<{address}>: Sender address rejected: Domain does not accept mail"
    )


def too_many_messages(ip: str, again: datetime) -> SmtpReply:
    """`again`: when the hourly count falls under the limit."""
    return SmtpReply(
        450,
        "4.7.1",
        f"Too many messages from {ip} in the last hour; "
        f"try again after {again.astimezone(UTC).strftime('%H:%M')} UTC",
    )


# --- policy: RCPT ----------------------------------------------------------------------

RCPT_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: RCPT TO:<address>")
NULL_RECIPIENT = SmtpReply(501, "5.1.3", "The null address is not a recipient")
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Too many recipients")
RELAY_DENIED = SmtpReply(554, "5.7.1", "Relay access denied")
# Sender-specified routing in a recipient (Postfix's untrusted routing): 553, as for any
# mailbox name not allowed.
SOURCE_ROUTE = SmtpReply(
    553, "5.1.3", "Source-routed addresses are not accepted; address the final recipient directly"
)
NESTED_ADDRESS = SmtpReply(553, "5.1.3", "An address inside the local part ('@') is not accepted")
PERCENT_HACK = SmtpReply(553, "5.1.3", "'%' routing in the local part is not accepted")
BANG_PATH = SmtpReply(
    553, "5.1.3", "'!' (UUCP bang path) routing in the local part is not accepted"
)


def bad_recipient(reason: str) -> SmtpReply:
    return SmtpReply(501, "5.1.3", f"Bad recipient address syntax: {reason}")


def unknown_recipient(address: str) -> SmtpReply:
    return SmtpReply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")


# --- policy: DATA ----------------------------------------------------------------------


def mail_loop(received_headers: int) -> SmtpReply:
    return SmtpReply(
        554, "5.4.6", f"Too many Received headers ({received_headers}): mail loop detected"
    )


# --- policy: the client address --------------------------------------------------------


def too_many_connections(ip: str) -> SmtpReply:
    return SmtpReply(421, "4.7.0", f"Too many connections from {ip}, try again later")


def blocked(ip: str, until: datetime, reason: str) -> SmtpReply:
    """421, not 5xx: a legitimate server behind the address retries after the block
    instead of bouncing its mail."""
    when = until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return SmtpReply(421, "4.7.0", f"{ip} is blocked until {when}: {reason}")


# --- policy: antispam (SPF at MAIL, spamd at DATA) ----------------------------------------


def spf_refused(domain: str, client_ip: str, result: str) -> SmtpReply:
    """RFC 7372: 5.7.23 is the SPF validation failure. The record's own explanation
    (exp=) is not repeated: it is text from whoever publishes the domain."""
    return SmtpReply(
        550,
        "5.7.23",
        f"SPF {result}: {client_ip} is not allowed to send mail from {domain}",
    )


def spf_temperror(domain: str) -> SmtpReply:
    """RFC 7372: 4.7.24, a temporary SPF error (RFC 7208 section 8.6: defer)."""
    return SmtpReply(451, "4.7.24", f"SPF check of {domain} failed temporarily, try again later")


SPAM_REFUSED = SmtpReply(550, "5.7.1", "Message refused as spam")
SPAMD_UNAVAILABLE = SmtpReply(
    451, "4.7.1", "Message cannot be scanned for spam now, try again later"
)
