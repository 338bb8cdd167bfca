"""Ingress's own reading of MAIL/RCPT paths and DATA: nothing reinterpreted, nothing smuggled."""

from __future__ import annotations

import pytest

from services.ingress.core.paths import split_path
from services.ingress.core.smuggling import bare_line_break, refusal


@pytest.mark.parametrize(
    ("arg", "path", "params"),
    [
        ("<alice@example.test>", "alice@example.test", ""),
        ("  <alice@example.test>  SIZE=10 BODY=8BITMIME", "alice@example.test", "SIZE=10 BODY=8BITMIME"),  # noqa: E501
        ("<>", "<>", ""),
        ("< >", "<>", ""),
        ("<> SIZE=5", "<>", "SIZE=5"),
        ("alice@example.test SIZE=5", "alice@example.test", "SIZE=5"),
        ("<@relay.test:bob@remote.test>", "@relay.test:bob@remote.test", ""),
        ('<"a>b"@example.test> SIZE=1', '"a>b"@example.test', "SIZE=1"),
        ('<"a\\">"@example.test>', '"a\\">"@example.test', ""),
        ("<alice(x)@example.test>", "alice(x)@example.test", ""),
        # Unclosed or followed by glued text: the whole argument, for policy to refuse.
        ("<alice@example.test", "<alice@example.test", ""),
        ("<alice@example.test>x", "<alice@example.test>x", ""),
        ('<"alice@example.test>', '<"alice@example.test>', ""),
        ("", "", ""),
    ],
)  # fmt: skip
def test_split_path(arg: str, path: str, params: str) -> None:
    assert split_path(arg) == (path, params)


# The end-of-data forms of SEC Consult's SMTP smuggling research (and hannob/smtpsmug),
# as they appear inside the data aiosmtpd hands over: every line ends in CRLF.
VARIANTS = {
    "<LF>.<LF>": b"text\n.\nMAIL FROM:<x@y.test>\r\n",
    "<CR>.<CR>": b"text\r.\rMAIL FROM:<x@y.test>\r\n",
    "<CR>.<LF>": b"text\r.\nMAIL FROM:<x@y.test>\r\n",
    "<LF>.<CR>": b"text\n.\rMAIL FROM:<x@y.test>\r\n",
    "<LF>.<CRLF>": b"text\n.\r\nMAIL FROM:<x@y.test>\r\n",
    "<CRLF>.<LF>": b"text\r\n\nMAIL FROM:<x@y.test>\r\n",  # dot already unstuffed
    "<CR>.<CRLF>": b"text\r.\r\nMAIL FROM:<x@y.test>\r\n",
    "<CRLF>.<CR>": b"text\r\n\rMAIL FROM:<x@y.test>\r\n",
}


@pytest.mark.parametrize("content", VARIANTS.values(), ids=list(VARIANTS))
def test_bare_line_breaks_are_refused(content: bytes) -> None:
    reply = refusal(content)
    assert reply is not None and reply.startswith("550 5.6.11 ")


@pytest.mark.parametrize("content", [b"text\r\n\x00.\r\n", b"text\r\n.\x00\r\n", b"a\x00b\r\n"])
def test_nul_is_refused(content: bytes) -> None:
    assert refusal(content) == "550 5.6.0 Message refused: NUL character in the message"


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", None),
        (b"a\r\n", None),
        (b"a\r\n\r\nb\r\n.\r\n", None),
        (b"\n", "LF"),
        (b"\r", "CR"),
        (b"a\r\r\n", "CR"),
        (b"a\n\r\n", "LF"),
        (b"a\r\nb\n", "LF"),
    ],
)
def test_bare_line_break(content: bytes, what: str | None) -> None:
    assert bare_line_break(content) == what
