"""The trace headers of the antispam results, and the client's forged results taken out.

Prepended above our Received header, newest first: X-Spam-* as SpamAssassin
writes them (when spamd scored the message), one Authentication-Results
(RFC 8601) named after server.hostname, and Received-SPF (RFC 7208 section
9.1). A client's Authentication-Results that claims our name would pass for
our own verdict, so it is removed first (RFC 8601 section 5); only the header
section is rewritten, the body is never touched. Everything here that came
from a client (sender, HELO name) or from DNS is escaped before it is written.
Pure: no I/O.
"""

from __future__ import annotations

import re

import authres

from libs.common.contract.antispam import AntispamResults, SpamVerdict, SpfResult

CRLF = b"\r\n"
_FIELD = b"authentication-results:"
# The field's name at the start of a header line, found without copying the message.
_FIELD_LINE = re.compile(rb"(?:^|\r\n)authentication-results:", re.IGNORECASE)
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_RULE = re.compile(r"[A-Za-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# SpamAssassin folds X-Spam-Status near 78 columns, after a comma of the test list.
_FOLD_AT = 76

_SPF_COMMENTS = {
    "pass": "domain of {sender} designates {ip} as permitted sender",
    "fail": "domain of {sender} does not designate {ip} as permitted sender",
    "softfail": "transitioning domain of {sender} does not designate {ip} as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {sender}",
    "none": "domain of {sender} does not publish an SPF record",
    "temperror": "temporary error while checking the domain of {sender}",
    "permerror": "the SPF record of the domain of {sender} is in error",
}


def _clean(text: str) -> str:
    """No line break or other control character of a client reaches a header."""
    return _CONTROL.sub("?", text)


def _comment(text: str) -> str:
    return "(" + re.sub(r"([()\\])", r"\\\1", _clean(text)) + ")"


def _value(text: str) -> str:
    """A key=value value of Received-SPF: dot-atom as it is, anything else quoted."""
    text = _clean(text)
    if _DOT_ATOM.fullmatch(text):
        return text
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'


def received_spf(spf: SpfResult, receiver: str) -> str:
    comment = _SPF_COMMENTS[spf.result].format(sender=spf.sender, ip=spf.client_ip)
    pairs = [f"client-ip={_value(spf.client_ip)}"]
    if spf.identity == "mailfrom":
        pairs.append(f"envelope-from={_value(spf.sender)}")
    if spf.helo:
        pairs.append(f"helo={_value(spf.helo)}")
    if spf.result == "permerror" and spf.explanation:
        pairs.append(f"problem={_value(spf.explanation)}")
    pairs += [f"receiver={_value(receiver)}", f"identity={spf.identity}"]
    first = f"Received-SPF: {spf.result} {_comment(f'{receiver}: {comment}')}"
    return first + "\r\n" + _fold("\t" + "; ".join(pairs), after=";")


def authentication_results(spf: SpfResult, authserv_id: str) -> str:
    if spf.identity == "mailfrom":
        result = authres.SPFAuthenticationResult(
            result=spf.result, smtp_mailfrom=_clean(spf.sender)
        )
    else:
        result = authres.SPFAuthenticationResult(result=spf.result, smtp_helo=_clean(spf.helo))
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=[result])
    return str(header)


def spam_headers(verdict: SpamVerdict) -> list[str]:
    """SpamAssassin's own format; none for a message spamd did not score."""
    if verdict.score is None:
        return []
    score = f"{verdict.score:.1f}"
    tests = ",".join(t for t in verdict.tests if _RULE.fullmatch(t)) or "none"
    status = (
        f"X-Spam-Status: {'Yes' if verdict.flagged else 'No'}, score={score} "
        f"required={verdict.tag_score:.1f} tests={tests}"
    )
    lines = ["X-Spam-Flag: YES"] if verdict.flagged else []
    return [*lines, f"X-Spam-Score: {score}", _fold(status)]


def _fold(line: str, after: str = ",") -> str:
    """Fold after `after` so no line of the field passes _FOLD_AT columns (but for a
    piece longer than that alone)."""
    out: list[str] = []
    current = ""
    for piece in re.split(f"(?<={re.escape(after)})", line):
        if current and len(current) + len(piece) > _FOLD_AT:
            out.append(current)
            current = "\t" + piece.lstrip(" ")
        else:
            current += piece
    out.append(current)
    return "\r\n".join(out)


def trace_headers(results: AntispamResults | None, hostname: str) -> bytes:
    """The header lines to prepend, newest first; b"" when nothing was checked."""
    if results is None:
        return b""
    fields: list[str] = []
    if results.spam is not None:
        fields += spam_headers(results.spam)
    if results.spf is not None:
        fields.append(authentication_results(results.spf, hostname))
        fields.append(received_spf(results.spf, hostname))
    return "".join(f"{f}\r\n" for f in fields).encode()


def merged(mail: AntispamResults | None, data: AntispamResults | None) -> AntispamResults | None:
    """The results of one message: SPF from the MAIL answer, the verdict from DATA's."""
    if mail is None and data is None:
        return None
    return AntispamResults(
        spf=mail.spf if mail else None,
        spam=data.spam if data else None,
        skipped=(mail.skipped if mail else None) or (data.skipped if data else None),
    )


def header_end(message: bytes) -> int:
    """Where the header section ends: after its empty line, or the whole message."""
    if message.startswith(CRLF):
        return 0
    at = message.find(CRLF + CRLF)
    return len(message) if at < 0 else at + 2


def without_forged_results(message: bytes, authserv_id: str) -> bytes:
    """The message less every Authentication-Results field naming `authserv_id`."""
    end = header_end(message)
    if not _FIELD_LINE.search(message, 0, end):
        return message
    head = message[:end]
    fields: list[list[bytes]] = []
    for line in head.split(CRLF)[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = [f for f in fields if not _names(b" ".join(f), authserv_id)]
    return b"".join(line + CRLF for f in kept for line in f) + message[end:]


def _names(line: bytes, authserv_id: str) -> bool:
    """Whether the field is an Authentication-Results naming `authserv_id`: comments and
    space aside, the first word of its value (RFC 8601 section 2.2)."""
    if not line.lower().startswith(_FIELD):
        return False
    value = line[len(_FIELD) :].decode("utf-8", "replace")
    value = re.sub(r"\([^()]*\)", " ", value)
    first = value.replace(";", " ").split()
    return bool(first) and first[0].lower().rstrip(".") == authserv_id.lower().rstrip(".")
