"""Server TLS contexts: a self-signed certificate for the hostname, or the operator's files."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from libs.common.mail.tlsutil import self_signed_pem, server_context

NOW = datetime(2025, 3, 4, tzinfo=UTC)


def test_self_signed_certificate_names_the_host() -> None:
    cert_pem, key_pem = self_signed_pem("mx.example.test", now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - NOW >= timedelta(days=300)
    assert b"PRIVATE KEY" in key_pem


def test_server_context_uses_given_files(tmp_path: Path) -> None:
    cert_pem, key_pem = self_signed_pem("files.example.test")
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    ctx = server_context(
        "ignored.example.test", str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    )
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.get_ca_certs() == []  # a server context: no client verification


def test_server_context_self_signed_without_files() -> None:
    assert isinstance(server_context("mx.example.test"), ssl.SSLContext)


def test_half_a_key_pair_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        server_context("mx.example.test", cert_file=str(tmp_path / "cert.pem"))
