"""Server-side TLS contexts: the operator's certificate, or a self-signed one.

A self-signed certificate is enough for opportunistic STARTTLS between MTAs
(RFC 7435: encryption without authentication beats cleartext), so a fresh
install offers TLS from its first start without any files.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SELF_SIGNED_VALIDITY = dt.timedelta(days=365)


def self_signed_pem(hostname: str, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A certificate and key for `hostname`, both PEM; P-256 is quick to make at start."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # An hour of slack for clients whose clock is a little behind ours.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def context_from_pem(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """`load_cert_chain` only reads files, so the PEM goes through a private temp dir."""
    ctx = _base_context()
    with tempfile.TemporaryDirectory(prefix="mailbus-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def server_context(
    hostname: str, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """The configured certificate when both files are given, else a self-signed one."""
    if cert_file and key_file:
        ctx = _base_context()
        ctx.load_cert_chain(cert_file, key_file)
        return ctx
    if cert_file or key_file:
        raise ValueError("tls.cert_file and tls.key_file must be given together")
    return context_from_pem(*self_signed_pem(hostname))
