"""Split a MAIL FROM / RCPT TO argument into the path and its parameters, interpreting nothing.

aiosmtpd reads paths with the e-mail *header* parser (RFC 5322), which drops
source routes and comments, re-quotes local parts and accepts an unclosed
`<`: the address policy would judge would no longer be the one the client
sent. So ingress only cuts the argument where the path ends and policy parses
the path by RFC 5321, the single authority on what an address means.
"""

from __future__ import annotations

NULL_PATH = "<>"


def split_path(arg: str) -> tuple[str, str]:
    """(path, parameters): the path without its angle brackets, `<>` for the null path.

    A path that does not end cleanly (no closing `>`, text glued after it) is
    returned whole, brackets and all, so that policy refuses it with a reason.
    """
    text = arg.strip()
    if not text:
        return "", ""
    if not text.startswith("<"):
        # RFC 5321 wants the brackets; lenient clients omit them. Policy still decides.
        path, _, rest = text.partition(" ")
        return path, rest.strip()
    end = _closing_bracket(text)
    if end is None:
        return text, ""
    inner, rest = text[1:end], text[end + 1 :]
    if rest and not rest[0].isspace():
        return text, ""
    return (inner if inner.strip() else NULL_PATH), rest.strip()


def _closing_bracket(text: str) -> int | None:
    """Index of the `>` that closes the path; one inside a quoted local part does not count."""
    quoted = False
    i = 1
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    return None
