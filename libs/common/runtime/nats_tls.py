"""TLS between a service and NATS: the client context the `nats` section asks for.

With `nats.tls_ca_file` every connection is TLS and the server must prove it
is the host named in nats.url with a certificate from those CAs: passwords and
message bodies then never cross the pod network in clear, and no one in the
middle can pose as the bus. A client certificate is added for servers that
verify their clients too.
"""

from __future__ import annotations

import ssl

from libs.common.config.sections import NatsSection


def client_context(nats: NatsSection) -> ssl.SSLContext | None:
    """None: nats-py's defaults (TLS only when the server requires it)."""
    if nats.tls_ca_file is None and nats.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=nats.tls_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if nats.tls_cert_file is not None and nats.tls_key_file is not None:
        context.load_cert_chain(nats.tls_cert_file, nats.tls_key_file)
    return context
