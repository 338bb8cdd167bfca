"""Credentials in NATS URLs become connection-wide, so failover keeps them."""

from __future__ import annotations

import pytest

from libs.common.runtime.bus import split_credentials


@pytest.mark.parametrize(
    ("servers", "plain", "user", "password"),
    [
        (["nats://u:p@10.0.0.1:4222"], ["nats://10.0.0.1:4222"], "u", "p"),
        (
            ["nats://u:p%40x@a:1", "nats://b:2"],
            ["nats://a:1", "nats://b:2"],
            "u",
            "p@x",
        ),
        (["127.0.0.1:4222"], ["nats://127.0.0.1:4222"], None, None),
        (["nats://[::1]:4222"], ["nats://[::1]:4222"], None, None),
        (["tls://u:p@h:4443"], ["tls://h:4443"], "u", "p"),
    ],
)
def test_split_credentials(
    servers: list[str], plain: list[str], user: str | None, password: str | None
) -> None:
    assert split_credentials(servers) == (plain, user, password)
