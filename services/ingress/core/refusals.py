"""Names for the refusals ingress or aiosmtpd send on their own, and the failed-command rule.

A refusal decided by policy carries its rule; the replies aiosmtpd writes by
itself (syntax errors, bad sequence, SIZE over the limit) do not, so they are
named here from their text, for the metric and the log. Anything else is
`smtp_<code>`.
"""

from __future__ import annotations

# (a piece of aiosmtpd's reply text, the rule it stands for); first match wins.
_LIBRARY_RULES: tuple[tuple[str, str], ...] = (
    ("message size exceeds fixed maximum", "max_message_size"),
    ("Too much mail data", "max_message_size"),
    ("Line too long", "line_too_long"),
    ("line too long", "line_too_long"),
    ("not recognized", "unknown_command"),
    ("need MAIL", "bad_sequence"),
    ("need RCPT", "bad_sequence"),
    ("nested MAIL", "bad_sequence"),
    ("first", "bad_sequence"),  # "send HELO first", "Must issue a STARTTLS command first"
    ("Syntax", "syntax"),
    ("bad syntax", "syntax"),
    ("malformed address", "syntax"),
    ("authenticat", "auth"),
    ("Authenticat", "auth"),
    ("base64", "auth"),
    ("Encryption required", "auth_tls"),
)

TOO_MANY_FAILURES = "421 4.7.0 Too many failed commands, closing connection"
FAILED_COMMANDS_RULE = "max_failed_commands"


def library_rule(reply: str) -> str:
    for piece, rule in _LIBRARY_RULES:
        if piece in reply:
            return rule
    return f"smtp_{reply[:3]}"


def reply_code(reply: str) -> int:
    return int(reply[:3]) if len(reply) >= 3 and reply[:3].isdigit() else 0


def counts_as_failure(reply: str) -> bool:
    """A 4xx/5xx reply to a command; 421 ends the session and is not counted again."""
    code = reply_code(reply)
    return code >= 400 and code != 421
