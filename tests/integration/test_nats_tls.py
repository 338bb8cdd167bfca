"""Services to NATS over verified TLS (nats.tls_ca_file), against a real nats-server.

The server requires TLS (a plain connection is refused) with a certificate
for "localhost" from a test CA. A service whose config names that CA connects
and answers on the bus; a CA that
did not sign the server's certificate, or a certificate from the right CA for
another name, is refused before any password is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from libs.common.config import Config, load_config_text
from libs.common.contract import subjects
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from libs.common.runtime import bus, nats_tls
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import start_service
from services.policy.service import PolicyService
from tests.support.certs import Authority, Issued
from tests.support.cli import mailbus


def tls_server(tmp: Path, issued: Issued) -> EmbeddedNats:
    return EmbeddedNats(
        data_dir=tmp / "nats",
        log_file=tmp / "nats.log",
        extra_config=(
            f'tls {{\n  cert_file: "{issued.cert_file}"\n  key_file: "{issued.key_file}"\n}}\n'
        ),
    )


@pytest.fixture
def ours(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path, "ours")


@pytest.fixture
def server(tmp_path: Path, ours: Authority) -> Iterator[EmbeddedNats]:
    running = tls_server(tmp_path, ours.issue(tmp_path, "localhost"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def config(ca_file: Path, port: int) -> Config:
    return load_config_text(
        f"""
nats: {{url: "nats://localhost:{port}", tls_ca_file: "{ca_file}"}}
server: {{hostname: mx.example.test, local_domains: [example.test]}}
security: {{require_sender_domain_dns: false}}
"""
    )


async def test_a_service_talks_to_nats_over_verified_tls(
    server: EmbeddedNats, ours: Authority
) -> None:
    cfg = config(ours.file, server.port)
    running = await start_service("policy", PolicyService, cfg, cfg.nats.url)
    try:
        client = await bus.connect(cfg.nats.url, "test", tls=nats_tls.client_context(cfg.nats))
        try:
            query = PolicyQuery(
                stage="helo", session=Session(session_id="s", client_ip="192.0.2.1")
            )
            msg = await client.request(
                subjects.policy_subject("helo"), query.model_dump_json().encode(), timeout=5
            )
            assert PolicyDecision.model_validate_json(msg.data).accepted
        finally:
            await client.close()
    finally:
        await running.close()


@pytest.mark.parametrize("wrong", ["another CA", "another name"])
async def test_a_server_that_cannot_prove_itself_is_refused(
    tmp_path: Path, ours: Authority, wrong: str
) -> None:
    if wrong == "another CA":
        issued = Authority.create(tmp_path, "theirs").issue(tmp_path, "localhost")
    else:
        issued = ours.issue(tmp_path, "evil-mitm.invalid")
    server = tls_server(tmp_path, issued)
    server.start()
    try:
        cfg = config(ours.file, server.port)
        context = nats_tls.client_context(cfg.nats)
        assert context is not None
        with pytest.raises(Exception) as caught:
            await nats.connect(cfg.nats.url, tls=context, allow_reconnect=False, connect_timeout=3)
        assert "certificate" in str(caught.value).lower() or isinstance(caught.value, OSError)
    finally:
        server.stop()


async def test_migrate_reaches_nats_over_tls_with_the_configs_ca(
    server: EmbeddedNats, ours: Authority, tmp_path: Path
) -> None:
    """As the Kubernetes Job runs it: --config for the CA (and the replica count),
    --nats-url for the admin user's servers."""
    path = tmp_path / "mailbus.yaml"
    path.write_text(
        f'nats: {{url: "nats://localhost:{server.port}", tls_ca_file: "{ours.file}"}}\n'
        "server: {hostname: mx.example.test}\n"
    )
    url = f"nats://localhost:{server.port}"
    rc, out, err = await mailbus("migrate", "--config", str(path), "--nats-url", url)
    assert rc == 0, err
    assert "topology up to date (1 replica)" in out
    # Every operator command takes the TLS settings from --config the same way: this one
    # reaches the server (no queue service runs here to answer it), never "cannot reach".
    rc, out, err = await mailbus("queue", "list", "--config", str(path), "--nats-url", url)
    assert rc == 2 and "the queue service does not answer" in err, err
