"""The DSN parameters of MAIL and RCPT (RFC 3461 section 4): found, checked, decoded.

aiosmtpd upper-cases every parameter and refuses those it does not know, so
the session takes the DSN ones out of the command (their case intact: ENVID and
ORCPT are the client's text) before aiosmtpd reads the rest, and the handler
parses them here. A syntax error is a `DsnSyntaxError` (core/errors.py), whose reply
is the one the command gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from libs.common.mail import xtext
from services.ingress.core.errors import DsnSyntaxError
from services.ingress.core.paths import split_path

MAIL_KEYWORDS = frozenset({"RET", "ENVID"})
RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})
NOTIFY_KEYWORDS = ("SUCCESS", "FAILURE", "DELAY")
ENVID_MAX = 100  # RFC 3461 section 4.4
ORCPT_MAX = 500  # RFC 3461 section 4.2: the whole parameter value
# How much longer the DSN parameters may make a command line (RFC 5321's 512 + these):
# " RET=HDRS ENVID=" and 100 characters; " NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" and 500.
MAIL_LINE_EXTRA = 16 + ENVID_MAX
RCPT_LINE_EXTRA = 36 + ORCPT_MAX


@dataclass(frozen=True)
class MailParams:
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptParams:
    notify: tuple[str, ...] = ()
    orcpt: str | None = None  # "type;address", decoded


def keyword(param: str) -> str:
    return param.partition("=")[0].upper()


def extract(arg: str, keywords: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    """`<path> PARAM...` (after `FROM:`/`TO:`) -> the same without the parameters named in
    `keywords`, and those, as written. A path that does not parse keeps everything."""
    text = arg.strip()
    _, params = split_path(text)
    if not params:
        return arg, ()
    taken: list[str] = []
    kept: list[str] = []
    for param in params.split():
        (taken if keyword(param) in keywords else kept).append(param)
    if not taken:
        return arg, ()
    head = text[: len(text) - len(params)]
    return head + " ".join(kept), tuple(taken)


def _values(params: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for param in params:
        key, eq, value = param.partition("=")
        key = key.upper()
        if not eq or not value:
            raise DsnSyntaxError(f"{key} needs a value ({key}=...)")
        if key in found:
            raise DsnSyntaxError(f"{key} given twice")
        found[key] = value
    return found


def parse_mail(params: Sequence[str]) -> MailParams:
    values = _values(params)
    ret: Literal["FULL", "HDRS"] | None = None
    if "RET" in values:
        match values["RET"].upper():
            case "FULL":
                ret = "FULL"
            case "HDRS":
                ret = "HDRS"
            case _:
                raise DsnSyntaxError("RET must be FULL or HDRS")
    envid = None
    if "ENVID" in values:
        raw = values["ENVID"]
        if len(raw) > ENVID_MAX:
            raise DsnSyntaxError(f"ENVID is longer than {ENVID_MAX} characters")
        try:
            envid = xtext.decode(raw)
        except xtext.XtextError as exc:
            raise DsnSyntaxError(f"ENVID is not valid xtext: {exc}") from None
    return MailParams(ret=ret, envid=envid)


def parse_rcpt(params: Sequence[str]) -> RcptParams:
    values = _values(params)
    notify = parse_notify(values["NOTIFY"]) if "NOTIFY" in values else ()
    orcpt = None
    if "ORCPT" in values:
        raw = values["ORCPT"]
        if len(raw) > ORCPT_MAX:
            raise DsnSyntaxError(f"ORCPT is longer than {ORCPT_MAX} characters")
        try:
            orcpt = xtext.decode_orcpt(raw)
        except xtext.XtextError as exc:
            raise DsnSyntaxError(f"ORCPT is not valid: {exc}") from None
    return RcptParams(notify=notify, orcpt=orcpt)


def parse_notify(value: str) -> tuple[str, ...]:
    """NEVER alone, or SUCCESS, FAILURE and DELAY in any combination (repeats ignored)."""
    words = [w.upper() for w in value.split(",")]
    if "NEVER" in words:
        if len(words) > 1:
            raise DsnSyntaxError("NOTIFY=NEVER cannot be combined with other keywords")
        return ("NEVER",)
    for word in words:
        if word not in NOTIFY_KEYWORDS:
            shown = word[:40] or "(empty)"
            raise DsnSyntaxError(
                f"NOTIFY keyword {shown} unknown: use NEVER or SUCCESS, FAILURE, DELAY"
            )
    return tuple(dict.fromkeys(words))
