"""SMTP smuggling (SEC Consult, December 2023): only <CRLF>.<CRLF> may end a message.

aiosmtpd 1.4.6 already reads DATA line by line up to <CRLF> and ends it only
at a line that is exactly ".<CRLF>", so `<LF>.<LF>`, `<CR>.<CR>`,
`<LF>.<CRLF>`, `<CRLF>.<LF>` and the like stay inside the message. They must
not leave it either: a next hop that does take `<LF>.<CR><LF>` for the end
would split the message there and run the rest as commands. So a message with
a bare CR or LF anywhere is refused, as Postfix's smtpd_forbid_bare_newline
does: nothing of it is stored or relayed. A NUL is refused too: a hop that
drops NULs would read `<CRLF><NUL>.<CRLF>` as the end of the message.
"""

from __future__ import annotations

import re

# Every line aiosmtpd hands over ends in CRLF, so any other CR or LF is bare.
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

BARE_NEWLINE_REPLY = (
    "550 5.6.11 Message refused: bare <{what}> in the message; every line must end with <CR><LF>"
)
NUL_REPLY = "550 5.6.0 Message refused: NUL character in the message"


def bare_line_break(content: bytes) -> str | None:
    """The first line break that is not part of a CRLF ("CR" or "LF"); None if there is none."""
    found = _BARE.search(content)
    if found is None:
        return None
    return "CR" if found.group() == b"\r" else "LF"


def refusal(content: bytes) -> str | None:
    """The reply that refuses this message data, or None when it may be accepted."""
    what = bare_line_break(content)
    if what is not None:
        return BARE_NEWLINE_REPLY.format(what=what)
    if b"\x00" in content:
        return NUL_REPLY
    return None
