"""AUTH's SASL framing (RFC 4954) for PLAIN and LOGIN: challenges, responses, credentials."""

from __future__ import annotations

import base64

import pytest

from services.ingress.core import sasl
from services.ingress.core.errors import SaslError, UnknownMechanism


def test_challenges_of_each_mechanism() -> None:
    assert sasl.challenges("PLAIN") == ("",)
    assert sasl.challenges("LOGIN") == ("Username:", "Password:")
    with pytest.raises(UnknownMechanism) as raised:
        sasl.challenges("CRAM-MD5")
    assert raised.value.reply == "504 5.5.4 Unrecognized authentication type"


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        (base64.b64encode(b"\0alice\0secret").decode(), b"\0alice\0secret"),
        ("=", b""),  # RFC 4954 section 4: an empty initial response
        ("", b""),
    ],
)
def test_initial_response(text: str, decoded: bytes) -> None:
    assert sasl.initial_response(text) == decoded


@pytest.mark.parametrize("text", ["not-base64!", "YWJj=ZGVm", "abc", "é"])
def test_initial_response_that_is_not_base64(text: str) -> None:
    with pytest.raises(SaslError) as raised:
        sasl.initial_response(text)
    assert raised.value.reply == "501 5.5.2 Can't decode base64"


def test_plain_credentials() -> None:
    assert sasl.credentials("PLAIN", [b"alice\0alice\0secret"]) == ("alice", "secret")
    assert sasl.credentials("PLAIN", [b"\0alice\0"]) == ("alice", "")
    # Bytes that are not UTF-8 are replaced, to fail policy's check, not the session.
    assert sasl.credentials("PLAIN", [b"\0al\xffce\0pw"]) == ("al\ufffdce", "pw")


@pytest.mark.parametrize("blob", [b"", b"alice", b"\0alice", b"\0alice\0secret\0more"])
def test_plain_that_does_not_split_in_three(blob: bytes) -> None:
    with pytest.raises(SaslError) as raised:
        sasl.credentials("PLAIN", [blob])
    assert raised.value.reply == "501 5.5.2 Can't split auth value"


def test_login_credentials() -> None:
    assert sasl.credentials("LOGIN", [b"alice", b"secret"]) == ("alice", "secret")
    with pytest.raises(UnknownMechanism):
        sasl.credentials("XOAUTH2", [b"token"])


def test_plain_that_asks_to_act_as_another_user_is_535() -> None:
    """RFC 4616 section 2: an authzid other than the authcid is refused, not ignored."""
    with pytest.raises(SaslError) as raised:
        sasl.credentials("PLAIN", [b"admin\0alice\0secret"])
    assert raised.value.reply.startswith("535 5.7.8 ")
