"""xtext (RFC 3461 section 4) and RFC 6533's utf-8 addresses, decoded and encoded."""

from __future__ import annotations

import pytest

from libs.common.mail import xtext


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("", ""),
        ("QF-2026-11", "QF-2026-11"),
        ("bob+2Bextra@example.test", "bob+extra@example.test"),
        ("a+3Db", "a=b"),
        ("two+20words", "two words"),
        ("+2b+3d", "+="),  # lower-case hex is read too
        ("!#$%&'()*,-./:;<>?@[\\]^_`{|}~", "!#$%&'()*,-./:;<>?@[\\]^_`{|}~"),
    ],
)
def test_decode(encoded: str, decoded: str) -> None:
    assert xtext.decode(encoded) == decoded


@pytest.mark.parametrize(
    ("encoded", "why"),
    [
        ("a+2", "two hex digits"),
        ("a+", "two hex digits"),
        ("a+G1", "two hex digits"),
        ("a=b", "not allowed"),
        ("a b", "not allowed"),
        ("caf\u00e9", "not allowed"),
        ("line+0D+0Abreak", "not a printable"),  # never a line break in a report
        ("nul+00", "not a printable"),
        ("del+7F", "not a printable"),
        ("+C3+A9", "not a printable"),  # xtext carries US-ASCII only
    ],
)
def test_decode_refuses(encoded: str, why: str) -> None:
    with pytest.raises(xtext.XtextError, match=why):
        xtext.decode(encoded)


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("bob@example.test", "bob@example.test"),
        ("bob+extra@example.test", "bob+2Bextra@example.test"),
        ("a=b c", "a+3Db+20c"),
        ("\u00e9", "+C3+A9"),
    ],
)
def test_encode(text: str, encoded: str) -> None:
    assert xtext.encode(text) == encoded


@pytest.mark.parametrize("text", ["", "x", "a+b=c d", "QF 2026/11 +=", "~!\\"])
def test_round_trip(text: str) -> None:
    assert xtext.decode(xtext.encode(text)) == text


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("bob@example.test", "bob@example.test"),
        ("j\\x{E9}r\\x{F4}me@example.test", "j\u00e9r\u00f4me@example.test"),
        ("j\u00e9r\u00f4me@example.test", "j\u00e9r\u00f4me@example.test"),  # unitext
        ("a\\x{2B}b\\x{3D}c", "a+b=c"),
        ("\\x{1F600}@example.test", "\U0001f600@example.test"),
    ],
)
def test_decode_utf8_address(encoded: str, decoded: str) -> None:
    assert xtext.decode_utf8_address(encoded) == decoded


@pytest.mark.parametrize(
    "encoded",
    ["a b", "a+b", "a=b", "a\\b", "a\\x{}", "a\\x{D800}", "a\\x{110000}", "a\\x{0A}", "\udcc3"],
)
def test_decode_utf8_address_refuses(encoded: str) -> None:
    with pytest.raises(xtext.XtextError):
        xtext.decode_utf8_address(encoded)


@pytest.mark.parametrize("address", ["bob@example.test", "j\u00e9r\u00f4me+x=y@ex.test", "\\"])
def test_utf8_address_round_trip(address: str) -> None:
    encoded = xtext.encode_utf8_address(address)
    assert encoded.isascii()
    assert xtext.decode_utf8_address(encoded) == address


@pytest.mark.parametrize(
    ("value", "orcpt"),
    [
        ("rfc822;Bob@remote.test", "rfc822;Bob@remote.test"),
        ("RFC822;bob+2Bx@remote.test", "RFC822;bob+x@remote.test"),
        ("x400;c+3Dfr+3Ba+3D+20", "x400;c=fr;a= "),
        ("utf-8;j\\x{E9}r\\x{F4}me@ex.test", "utf-8;j\u00e9r\u00f4me@ex.test"),
    ],
)
def test_decode_orcpt(value: str, orcpt: str) -> None:
    assert xtext.decode_orcpt(value) == orcpt


@pytest.mark.parametrize(
    "value", ["bob@remote.test", ";bob@remote.test", "rfc822;", "rfc 822;bob", "rfc822;a=b"]
)
def test_decode_orcpt_refuses(value: str) -> None:
    with pytest.raises(xtext.XtextError):
        xtext.decode_orcpt(value)


@pytest.mark.parametrize(
    ("orcpt", "value"),
    [
        ("rfc822;Bob@remote.test", "rfc822;Bob@remote.test"),
        ("rfc822;bob+x@remote.test", "rfc822;bob+2Bx@remote.test"),
        ("bob@remote.test", "rfc822;bob@remote.test"),
        ("rfc822;j\u00e9r\u00f4me@ex.test", "utf-8;j\\x{E9}r\\x{F4}me@ex.test"),
        ("utf-8;j\u00e9r\u00f4me@ex.test", "utf-8;j\\x{E9}r\\x{F4}me@ex.test"),
        ("x400;c=fr;a= ", "x400;c+3Dfr;a+3D+20"),
    ],
)
def test_encode_orcpt(orcpt: str, value: str) -> None:
    assert xtext.encode_orcpt(orcpt) == value
    if ";" in orcpt and orcpt.isascii():
        assert xtext.decode_orcpt(value) == orcpt
