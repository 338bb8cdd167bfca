"""The DSN parameters of MAIL and RCPT (RFC 3461): taken out of the command, then parsed."""

from __future__ import annotations

import pytest

from services.ingress.core import dsn
from services.ingress.core.dsn import MailParams, RcptParams
from services.ingress.core.errors import DsnSyntaxError


@pytest.mark.parametrize(
    ("arg", "keywords", "kept", "taken"),
    [
        ("<a@x.test>", dsn.MAIL_KEYWORDS, "<a@x.test>", ()),
        ("<a@x.test> SIZE=10", dsn.MAIL_KEYWORDS, "<a@x.test> SIZE=10", ()),
        (
            "<a@x.test> RET=hdrs SIZE=10 ENVID=Ab+2Bc",
            dsn.MAIL_KEYWORDS,
            "<a@x.test> SIZE=10",
            ("RET=hdrs", "ENVID=Ab+2Bc"),
        ),
        ("<> ret=FULL", dsn.MAIL_KEYWORDS, "<> ", ("ret=FULL",)),
        (
            "<b@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B@y.test",
            dsn.RCPT_KEYWORDS,
            "<b@y.test> ",
            ("NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;B@y.test"),
        ),
        # A MAIL parameter on RCPT is not ours to take: aiosmtpd refuses it (555).
        ("<b@y.test> RET=FULL", dsn.RCPT_KEYWORDS, "<b@y.test> RET=FULL", ()),
        ("b@y.test NOTIFY=NEVER", dsn.RCPT_KEYWORDS, "b@y.test ", ("NOTIFY=NEVER",)),
        # A path that does not end cleanly keeps everything, for policy to refuse.
        ("<b@y.test NOTIFY=NEVER", dsn.RCPT_KEYWORDS, "<b@y.test NOTIFY=NEVER", ()),
        ('<"a> b"@y.test> NOTIFY=NEVER', dsn.RCPT_KEYWORDS, '<"a> b"@y.test> ', ("NOTIFY=NEVER",)),
    ],
)
def test_extract(arg: str, keywords: frozenset[str], kept: str, taken: tuple[str, ...]) -> None:
    assert dsn.extract(arg, keywords) == (kept, taken)


@pytest.mark.parametrize(
    ("params", "parsed"),
    [
        ((), MailParams()),
        (("RET=FULL",), MailParams(ret="FULL")),
        (("ret=hdrs",), MailParams(ret="HDRS")),
        (("ENVID=QF-2026-11",), MailParams(envid="QF-2026-11")),
        (("ENVID=a+2Bb+3Dc+20d", "RET=HDRS"), MailParams(ret="HDRS", envid="a+b=c d")),
        (("envid=" + "x" * 100,), MailParams(envid="x" * 100)),
    ],
)
def test_parse_mail(params: tuple[str, ...], parsed: MailParams) -> None:
    assert dsn.parse_mail(params) == parsed


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("RET=FULL", "RET=HDRS"), "RET given twice"),
        (("RET=FULL", "ret=FULL"), "RET given twice"),
        (("RET=BODY",), "RET must be FULL or HDRS"),
        (("RET=",), "RET needs a value"),
        (("RET",), "RET needs a value"),
        (("ENVID=" + "x" * 101,), "ENVID is longer than 100 characters"),
        (("ENVID=a+0D+0Ab",), "ENVID is not valid xtext"),
        (("ENVID=a+zz",), "ENVID is not valid xtext"),
        (("ENVID=a=b",), "ENVID is not valid xtext"),
        (("ENVID=1", "ENVID=2"), "ENVID given twice"),
    ],
)
def test_parse_mail_refuses(params: tuple[str, ...], message: str) -> None:
    with pytest.raises(DsnSyntaxError, match=message):
        dsn.parse_mail(params)


@pytest.mark.parametrize(
    ("params", "parsed"),
    [
        ((), RcptParams()),
        (("NOTIFY=NEVER",), RcptParams(notify=("NEVER",))),
        (("notify=never",), RcptParams(notify=("NEVER",))),
        (("NOTIFY=SUCCESS",), RcptParams(notify=("SUCCESS",))),
        (("NOTIFY=delay,Failure,SUCCESS",), RcptParams(notify=("DELAY", "FAILURE", "SUCCESS"))),
        (("NOTIFY=SUCCESS,SUCCESS",), RcptParams(notify=("SUCCESS",))),
        (("ORCPT=rfc822;Bob@remote.test",), RcptParams(orcpt="rfc822;Bob@remote.test")),
        (
            ("ORCPT=rfc822;bob+2Bx@remote.test", "NOTIFY=FAILURE"),
            RcptParams(notify=("FAILURE",), orcpt="rfc822;bob+x@remote.test"),
        ),
        (("ORCPT=rfc822;" + "b" * 493,), RcptParams(orcpt="rfc822;" + "b" * 493)),
    ],
)
def test_parse_rcpt(params: tuple[str, ...], parsed: RcptParams) -> None:
    assert dsn.parse_rcpt(params) == parsed


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("NOTIFY=NEVER,SUCCESS",), "NEVER cannot be combined"),
        (("NOTIFY=FAILURE,never",), "NEVER cannot be combined"),
        (("NOTIFY=ALWAYS",), "NOTIFY keyword ALWAYS unknown"),
        (("NOTIFY=SUCCESS,",), r"NOTIFY keyword \(empty\) unknown"),
        (("NOTIFY=",), "NOTIFY needs a value"),
        (("NOTIFY=SUCCESS", "NOTIFY=DELAY"), "NOTIFY given twice"),
        (("ORCPT=bob@remote.test",), "ORCPT is not valid"),
        (("ORCPT=rfc822;b+0Ab@remote.test",), "ORCPT is not valid"),
        (("ORCPT=rfc822;" + "b" * 494,), "ORCPT is longer than 500 characters"),
        (("ORCPT=rfc822;a", "ORCPT=rfc822;b"), "ORCPT given twice"),
    ],
)
def test_parse_rcpt_refuses(params: tuple[str, ...], message: str) -> None:
    with pytest.raises(DsnSyntaxError, match=message):
        dsn.parse_rcpt(params)
