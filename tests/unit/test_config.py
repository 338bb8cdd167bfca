"""The configuration contract: what loads, what fails, and how failures are reported."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML

from libs.common.config import Config, ConfigError, load_config, load_config_text
from libs.common.config.cli import config_check
from libs.common.config.dump import effective_config_yaml
from libs.common.config.reference import markdown

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "mailbus.example.yaml"
REFERENCE = ROOT / "docs" / "configuration.md"


def load(text: str, base_dir: Path | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), source="mailbus.yaml", base_dir=base_dir)


def errors_of(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, base_dir)
    return info.value.errors


# --- what loads ------------------------------------------------------------------------------


def test_contract_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.server.hostname == "mx.example.test"
    assert config.local_domains == ["example.test"]
    assert config.nats.url == ["nats://127.0.0.1:4222"]
    assert [(lst.name, lst.host, lst.port) for lst in config.listeners] == [
        ("smtp", "0.0.0.0", 2525),
        ("submission", "0.0.0.0", 2587),
        ("pop3", "0.0.0.0", 2110),
    ]
    assert [lst.name for lst in config.smtp_listeners] == ["smtp", "submission"]
    assert [lst.name for lst in config.pop3_listeners] == ["pop3"]
    assert config.listeners[1].require_auth
    assert config.users[0].password_hash == "$argon2id$v=19$m=65536,t=3,p=4$..."
    assert config.users[0].aliases == ["a.liddell@example.test"]
    assert config.relay.pop3_before_smtp.duration == timedelta(minutes=30)
    assert config.security.directory_harvest.block_for == timedelta(hours=1)
    assert config.security.max_message_size == 25 * 1024**2
    assert config.mailboxes.quota == 1024**3
    assert config.queue.bounce_after == timedelta(days=5)
    assert config.delivery.connect_timeout == timedelta(seconds=30)
    assert config.telemetry.metrics_address == "0.0.0.0:9100"
    local = config.ip_group("local_network")
    assert local is not None and local.contains("::ffff:10.9.8.7") and local.contains("::1")
    assert config.ip_group("trusted_servers") is not None
    assert config.ip_group("nope") is None
    assert config.warnings() == []


@pytest.mark.parametrize("text", ["", "null\n", "# nothing here\n", "~\n"])
def test_empty_file_is_a_closed_relay_on_loopback(text: str) -> None:
    config = load(text)
    assert config == Config()
    assert config.local_domains == []
    assert config.ip_groups == {}
    assert config.users == []
    assert config.nats.url == []  # `mailbus up` starts the embedded server
    assert config.nats.stream_replicas == 1
    assert config.relay.mode == "restricted"
    assert config.relay.allowed_ip_group is None
    assert config.security.exempt_ip_group is None
    assert {lst.host for lst in config.listeners} == {"127.0.0.1"}
    assert [lst.port for lst in config.listeners] == [2525, 2587, 2110]
    assert config.policy.timeout == timedelta(seconds=5)
    assert config.telemetry.metrics_address is None
    assert not config.is_local_domain("example.test")


def test_empty_sections_mean_defaults() -> None:
    config = load("tls:\nqueue:\nlisteners:\nip_groups:\nusers:\n")
    assert config.tls == Config().tls and config.queue == Config().queue
    assert config.listeners == [] and config.ip_groups == {} and config.users == []


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValidationError):
        config.server.hostname = "other"  # type: ignore[misc]


def test_local_domains_are_normalized() -> None:
    config = load("server: {local_domains: [Example.TEST., other.test]}")
    assert config.local_domains == ["example.test", "other.test"]
    assert config.is_local_domain("EXAMPLE.test.")
    assert config.is_local_domain(" other.test ")
    assert not config.is_local_domain("sub.example.test")
    assert load("server: {local_domains: 'a.test, b.test'}").local_domains == ["a.test", "b.test"]


def test_postmaster_defaults_to_the_hostname() -> None:
    assert load("server: {hostname: MX.example.test}").server.postmaster_address == (
        "postmaster@mx.example.test"
    )
    config = load("server: {postmaster: Admin@Example.TEST}")
    assert config.server.postmaster_address == "Admin@example.test"


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        ("nats://a:4222", ["nats://a:4222"]),
        ("nats://a:4222, nats://b:4222", ["nats://a:4222", "nats://b:4222"]),
        ("[nats://a:4222, 'tls://b:4443']", ["nats://a:4222", "tls://b:4443"]),
        ("127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        ("null", []),
        ("[]", []),
    ],
)
def test_nats_url_forms(value: str, urls: list[str]) -> None:
    assert load(f"nats:\n  url: {value}\n").nats.url == urls


def test_dns_servers() -> None:
    config = load("""\
        dns:
          servers: [1.1.1.1, "127.0.0.1:5353", "[::1]:5353", "::1", ns.example.test]
          timeout: 2s
        """)
    assert [tuple(s) for s in config.dns.servers] == [
        ("1.1.1.1", 53),
        ("127.0.0.1", 5353),
        ("::1", 5353),
        ("::1", 53),
        ("ns.example.test", 53),
    ]
    assert config.dns.timeout == timedelta(seconds=2)


def test_listener_forms() -> None:
    config = load("""\
        listeners:
          - {name: v6, address: "[::]:25", proxy_protocol: true}
          - {name: any, address: "127.0.0.1:0", protocol: pop3, tls: implicit}
          - {name: any2, address: "127.0.0.1:0"}
        """)
    v6, anyport, _ = config.listeners
    assert (v6.host, v6.port, v6.tls, v6.proxy_protocol) == ("::", 25, "starttls", True)
    assert (anyport.port, anyport.protocol) == (0, "pop3")


def test_user_addresses_keep_local_part_and_lower_domain() -> None:
    config = load("""\
        server: {local_domains: [example.test]}
        users:
          - {address: Alice@EXAMPLE.Test, aliases: "al@example.test, Ali@Example.test."}
          - {address: bob@example.test}
        """)
    assert config.users[0].address == "Alice@example.test"
    assert config.users[0].aliases == ["al@example.test", "Ali@example.test"]
    assert config.users[1].password_hash is None


def test_users_file_is_merged(tmp_path: Path) -> None:
    (tmp_path / "more.yaml").write_text("users:\n  - address: bob@example.test\n")
    (tmp_path / "bare.yaml").write_text("- address: carol@example.test\n")
    base = """\
        server: {local_domains: [example.test]}
        users: [{address: alice@example.test}]
        users_file: %s
        """
    config = load(base % "more.yaml", base_dir=tmp_path)
    assert [u.address for u in config.users] == ["alice@example.test", "bob@example.test"]
    assert config.users_file == str(tmp_path / "more.yaml")
    bare = load(base % str(tmp_path / "bare.yaml"))
    assert [u.address for u in bare.users][1:] == ["carol@example.test"]


def test_users_file_errors_point_into_that_file(tmp_path: Path) -> None:
    (tmp_path / "users.yaml").write_text("users:\n  - address: bob@example.test\n  - address: x\n")
    errors = errors_of(
        "server: {local_domains: [example.test]}\nusers_file: users.yaml\n", tmp_path
    )
    assert errors == [
        f"{tmp_path / 'users.yaml'}:3: users.1.address: 'x' is not an address of the form "
        "local@domain"
    ]


def test_password_file_is_read_and_masked(tmp_path: Path) -> None:
    (tmp_path / "relay.pw").write_text("s3cret\n")
    config = load(
        """\
        delivery:
          mode: relay
          relay_host:
            host: smtp.provider.test
            auth: {enabled: true, username: mailbus, password_file: relay.pw}
        """,
        tmp_path,
    )
    auth = config.delivery.relay_host.auth
    assert auth.effective_password == "s3cret"
    assert auth.password_file == str(tmp_path / "relay.pw")
    assert "s3cret" not in effective_config_yaml(config)
    inline = load("delivery: {relay_host: {auth: {password: hunter2}}}")
    assert inline.delivery.relay_host.auth.effective_password == "hunter2"
    assert "hunter2" not in repr(inline) and "hunter2" not in effective_config_yaml(inline)


def test_credentials_file_stays_a_path(tmp_path: Path) -> None:
    (tmp_path / "mailbus.creds").write_text("-----BEGIN NATS USER JWT-----\n")
    config = load("nats: {credentials_file: mailbus.creds}", tmp_path)
    assert config.nats.credentials_file == str(tmp_path / "mailbus.creds")


def test_tls_files(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("PEM\n")
    config = load("tls: {cert_file: cert.pem, key_file: key.pem}", tmp_path)
    assert config.tls.key_file == str(tmp_path / "key.pem")


def test_warnings_for_risky_settings() -> None:
    config = load("""\
        relay: {mode: open}
        listeners: [{name: sub, address: "127.0.0.1:587", tls: none, require_auth: true}]
        """)
    assert len(config.warnings()) == 2
    assert "open" in config.warnings()[0]


# --- what fails, and how it is reported --------------------------------------------------

BROKEN = [
    pytest.param(
        """\
        server:
          hostname: mx.example.test
        security:
          max_recipients: 10
          max_recipents: 5
        """,
        ["mailbus.yaml:5: security.max_recipents: unknown key (did you mean 'max_recipients'?)"],
        id="misspelled-key",
    ),
    pytest.param(
        "server: {}\ncolour: blue\n",
        ["mailbus.yaml:2: colour: unknown key"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "queue:\n  retry_interval: 30 minutes\n",
        ["mailbus.yaml:2: queue.retry_interval: invalid duration '30 minutes'"],
        id="bad-duration",
    ),
    pytest.param(
        "policy: {timeout: 0s}\n",
        ["mailbus.yaml:1: policy.timeout: must be longer than 0s"],
        id="zero-timeout",
    ),
    pytest.param(
        "security:\n  max_message_size: 25XB\n",
        ["mailbus.yaml:2: security.max_message_size: invalid size '25XB'"],
        id="bad-size",
    ),
    pytest.param(
        "ip_groups:\n  lan:\n    - 10.0.0.0/8\n    - 10.0.0.300\n",
        ["mailbus.yaml:4: ip_groups.lan.1: '10.0.0.300' is not an IP address"],
        id="bad-ip-entry",
    ),
    pytest.param(
        "ip_groups:\n  lan: [10.0.0.9-10.0.0.1]\n",
        ["mailbus.yaml:2: ip_groups.lan.0: range '10.0.0.9-10.0.0.1' is reversed"],
        id="reversed-range",
    ),
    pytest.param(
        "ip_groups:\n  lan: [10.0.0.1/8]\n",
        ["ip_groups.lan.0: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"],
        id="cidr-host-bits",
    ),
    pytest.param(
        "ip_groups:\n  'my lan': []\n",
        ["mailbus.yaml:2: ip_groups.my lan: 'my lan': a group name is"],
        id="bad-group-name",
    ),
    pytest.param(
        "ip_groups:\n  wan: [192.0.2.0/24]\nrelay:\n  allowed_ip_group: lan\n",
        ["mailbus.yaml:4: relay.allowed_ip_group: no ip group named 'lan'"],
        id="unknown-group",
    ),
    pytest.param(
        "security:\n  exempt_ip_group: trusted\n",
        ["mailbus.yaml:2: security.exempt_ip_group: no ip group named 'trusted'"],
        id="unknown-group-no-groups",
    ),
    pytest.param(
        """\
        listeners:
          - name: smtp
            address: 0.0.0.0:25
          - name: submission
            address: 0.0.0.0:587
            tls: startls
        """,
        [
            "mailbus.yaml:6: listeners.1.tls: Input should be 'none', 'starttls' or 'implicit',"
            " got 'startls'"
        ],
        id="bad-listener-tls",
    ),
    pytest.param(
        "listeners:\n  - name: smtp\n    address: 0.0.0.0\n",
        ["mailbus.yaml:3: listeners.0.address: '0.0.0.0': expected host:port"],
        id="listener-without-port",
    ),
    pytest.param(
        "listeners:\n  - name: smtp\n",
        ["mailbus.yaml:2: listeners.0.address: required key is missing"],
        id="listener-without-address",
    ),
    pytest.param(
        "listeners:\n  - {name: a, address: ':25'}\n  - {name: b, address: '[::1]:99999'}\n",
        [
            "mailbus.yaml:2: listeners.0.address: ':25': '' is neither an IP address",
            "mailbus.yaml:3: listeners.1.address: '[::1]:99999': port must be",
        ],
        id="bad-listener-addresses",
    ),
    pytest.param(
        "listeners:\n  - {name: a, address: '0.0.0.0:25'}\n  - {name: a, address: '0.0.0.0:25'}\n",
        [
            "mailbus.yaml:3: listeners.1.name: 'a' is used twice",
            "mailbus.yaml:3: listeners.1.address: same address as listener 'a'",
        ],
        id="duplicate-listeners",
    ),
    pytest.param(
        "mailboxes:\n  store: lmtp\n",
        ["mailbus.yaml:1: mailboxes.lmtp_address: required when mailboxes.store is lmtp"],
        id="lmtp-without-address",
    ),
    pytest.param(
        "tls:\n  cert_file: /etc/hostname\n",
        ["mailbus.yaml:1: tls.key_file: required when tls.cert_file is set"],
        id="cert-without-key",
    ),
    pytest.param(
        "tls:\n  key_file: missing.pem\n",
        ["mailbus.yaml:2: tls.key_file: cannot read", "No such file"],
        id="missing-key-file",
    ),
    pytest.param(
        "delivery:\n  relay_host:\n    auth:\n      password_file: nowhere/relay.pw\n",
        ["mailbus.yaml:4: delivery.relay_host.auth.password_file: cannot read"],
        id="missing-password-file",
    ),
    pytest.param(
        "delivery: {relay_host: {auth: {password: a, password_file: secret.txt}}}\n",
        ["delivery.relay_host.auth.password_file: give password or password_file, not both"],
        id="password-twice",
    ),
    pytest.param(
        "delivery:\n  relay_host:\n    auth:\n      enabled: true\n",
        [
            "mailbus.yaml:3: delivery.relay_host.auth.username: required when auth is enabled",
            "mailbus.yaml:3: delivery.relay_host.auth.password: required when auth is enabled",
        ],
        id="auth-without-credentials",
    ),
    pytest.param(
        "delivery:\n  mode: relay\n",
        ["mailbus.yaml:1: delivery.relay_host.host: required when delivery.mode is relay"],
        id="relay-without-host",
    ),
    pytest.param(
        "nats:\n  url: http://localhost:4222\n  stream_replicas: 0\n",
        [
            "mailbus.yaml:2: nats.url.0: 'http://localhost:4222': expected nats://host:port",
            "mailbus.yaml:3: nats.stream_replicas: Input should be greater than or equal to 1",
        ],
        id="bad-nats",
    ),
    pytest.param(
        "nats:\n  credentials_file: missing.creds\n",
        ["mailbus.yaml:2: nats.credentials_file: cannot read"],
        id="missing-creds",
    ),
    pytest.param(
        "queue: {warn_after: 6d}\n",
        ["mailbus.yaml:1: queue.warn_after: must be shorter than queue.bounce_after"],
        id="warning-after-bounce",
    ),
    pytest.param(
        "server:\n  local_domains: [example.test]\nusers:\n  - address: bob@other.test\n",
        ["mailbus.yaml:4: users.0.address: 'other.test' is not one of server.local_domains"],
        id="user-outside-local-domains",
    ),
    pytest.param(
        """\
        server: {local_domains: [example.test]}
        users:
          - {address: alice@example.test, aliases: [bob@example.test]}
          - {address: Bob@Example.test}
        """,
        ["mailbus.yaml:4: users.1.address: 'Bob@example.test' is defined twice"],
        id="alias-is-another-user",
    ),
    pytest.param(
        "server: {local_domains: [example.test]}\nusers_file: dup_users.yaml\n"
        "users:\n  - address: alice@example.test\n",
        ["dup_users.yaml:2: users.0.address: 'alice@example.test' is defined twice"],
        id="users-file-duplicate",
    ),
    pytest.param(
        "users_file: no_such_users.yaml\n",
        ["mailbus.yaml:1: users_file: cannot read", "no_such_users.yaml"],
        id="missing-users-file",
    ),
    pytest.param(
        "users_file: broken_users.yaml\n",
        ["broken_users.yaml:3: YAML syntax error"],
        id="users-file-syntax",
    ),
    pytest.param(
        "dns:\n  servers: ['[::1]', 'ns.example.test:0', 'bad host']\n",
        ["dns.servers.1: 'ns.example.test:0': port must be", "dns.servers.2: 'bad host'"],
        id="bad-dns-servers",
    ),
    pytest.param(
        "server:\n  hostname: -bad-\n  postmaster: nobody\n",
        [
            "mailbus.yaml:2: server.hostname: '-bad-' is not a valid domain name",
            "mailbus.yaml:3: server.postmaster: 'nobody' is not an address",
        ],
        id="bad-server",
    ),
    pytest.param(
        "relay:\n  mode: closed\n  pop3_before_smtp: {minutes: 0}\n",
        [
            "mailbus.yaml:2: relay.mode: Input should be 'open' or 'restricted', got 'closed'",
            "mailbus.yaml:3: relay.pop3_before_smtp.minutes: Input should be greater than",
        ],
        id="bad-relay",
    ),
    pytest.param(
        "security:\n  max_recipients: -1\n  max_failed_commands: lots\n",
        [
            "mailbus.yaml:2: security.max_recipients: Input should be greater than or equal to 0",
            "mailbus.yaml:3: security.max_failed_commands: Input should be a valid integer",
        ],
        id="bad-counts",
    ),
    pytest.param(
        "server: [a, b]\nlisteners: {name: smtp}\n",
        [
            "mailbus.yaml:1: server: expected a mapping of keys, got list",
            "mailbus.yaml:2: listeners: expected a list, got dict",
        ],
        id="wrong-shapes",
    ),
    pytest.param(
        "- just\n- a list\n",
        ["mailbus.yaml:1: the top level must be a mapping of sections"],
        id="top-level-list",
    ),
    pytest.param(
        "server:\n  hostname: a\nserver:\n  hostname: b\n",
        ['mailbus.yaml:3: YAML syntax error: found duplicate key "server"'],
        id="duplicate-key",
    ),
    pytest.param(
        "server:\n  local_domains: [a.test\nnats: {}\n",
        ["mailbus.yaml:3: YAML syntax error"],
        id="yaml-syntax",
    ),
]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text("pw\n")
    (tmp_path / "dup_users.yaml").write_text("users:\n  - address: alice@example.test\n")
    (tmp_path / "broken_users.yaml").write_text("users:\n  - {address: [\n")
    return tmp_path


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_configurations(text: str, expected: list[str], files: Path) -> None:
    errors = errors_of(text, base_dir=files)
    joined = "\n".join(errors)
    for fragment in expected:
        assert fragment in joined, f"{fragment!r} not in:\n{joined}"
    assert all("\n" not in line for line in errors)


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of("""\
        server:
          hostname: mx.example.test
        ip_groups:
          lan: [10.0.0.0/8, 10.0.0.300]
        relay:
          allowed_ip_group: wan
        security:
          max_recipents: 5
          max_message_size: 25XB
          exempt_ip_group: trusted
        queue:
          retry_interval: soon
        bogus: 1
        """)
    assert [line.split(": ")[0] for line in errors] == [
        "mailbus.yaml:4",
        "mailbus.yaml:6",
        "mailbus.yaml:8",
        "mailbus.yaml:9",
        "mailbus.yaml:10",
        "mailbus.yaml:12",
        "mailbus.yaml:13",
    ]
    joined = "\n".join(errors)
    for key in (
        "ip_groups.lan.1:",
        "relay.allowed_ip_group: no ip group named 'wan'",
        "security.max_recipents: unknown key",
        "security.max_message_size: invalid size",
        "security.exempt_ip_group: no ip group named 'trusted'",
        "queue.retry_interval: invalid duration",
        "bogus: unknown key",
    ):
        assert key in joined


def test_yaml_merge_keys_load_and_keep_lines() -> None:
    text = """\
        listeners:
          - &plain {name: smtp, address: "127.0.0.1:25", tls: none}
          - <<: *plain
            name: other
            address: "127.0.0.1:26"
          - <<: *plain
            name: third
            bogus: 1
        """
    assert errors_of(text) == ["mailbus.yaml:8: listeners.2.bogus: unknown key"]
    config = load(text.replace("bogus: 1", "address: '127.0.0.1:27'"))
    assert [lst.tls for lst in config.listeners] == ["none"] * 3


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.errors == [
        f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    ]


def test_relative_paths_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "relay.pw").write_text("pw")
    (tmp_path / "conf" / "mailbus.yaml").write_text(
        "delivery: {relay_host: {auth: {password_file: relay.pw}}}\n"
    )
    config = load_config(tmp_path / "conf" / "mailbus.yaml")
    assert config.delivery.relay_host.auth.effective_password == "pw"


# --- the effective configuration ------------------------------------------------------------


def test_effective_config_writes_units_back_and_masks_secrets() -> None:
    config = load_config(EXAMPLE)
    text = effective_config_yaml(config)
    assert "retry_interval: 30m" in text
    assert "bounce_after: 5d" in text
    assert "max_message_size: 25MB" in text
    assert "quota: 1GB" in text
    assert "password_hash: '***'" in text
    assert "argon2id" not in text
    assert "max_recipients: 100" in text
    # The mask is no argon2id hash, so the accounts do not load back; the rest does.
    reread = load_config_text(text.replace("password_hash: '***'", "password_hash: null"))
    assert reread.model_dump(exclude={"users"}) == config.model_dump(exclude={"users"})


def test_effective_config_masks_nats_url_credentials() -> None:
    config = load("nats: {url: 'nats://user:pw@h1:4222, nats://token@h2:4222'}")
    text = effective_config_yaml(config)
    assert "nats://user:***@h1:4222" in text and "nats://***@h2:4222" in text
    assert "pw@" not in text and "token" not in text


def test_config_check_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_check(str(EXAMPLE)) == 0
    out = capsys.readouterr()
    assert "hostname: mx.example.test" in out.out
    assert out.err == ""


def test_config_check_on_a_misspelled_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mailbus.yaml"
    path.write_text("server:\n  hostname: mx.example.test\nsecurity:\n  max_recipents: 5\n")
    assert config_check(str(path)) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        f"{path}:4: security.max_recipents: unknown key (did you mean 'max_recipients'?)"
    ]


# --- the reference --------------------------------------------------------------------------


def test_reference_doc_is_up_to_date() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == markdown(), (
        "docs/configuration.md is stale: "
        "run `python -m libs.common.config.reference > docs/configuration.md`"
    )


def _leaf_paths(node: object, path: str) -> list[str]:
    """Dotted paths of the example's leaves, written as the reference writes them."""
    if isinstance(node, dict):
        if path == "ip_groups":
            return [f"{path}.<name>"]
        prefix = f"{path}." if path else ""
        return [p for key, value in node.items() for p in _leaf_paths(value, prefix + key)]
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        return [p for item in node for p in _leaf_paths(item, f"{path}[]")]
    return [path]


def test_every_example_key_is_in_the_reference() -> None:
    example = YAML(typ="safe").load(EXAMPLE.read_text())
    doc = markdown()
    paths = set(_leaf_paths(example, ""))
    assert "listeners[].require_auth" in paths and "delivery.relay_host.auth.pop3_port" in paths
    missing = sorted(p for p in paths if f"| `{p}` |" not in doc)
    assert missing == []


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    seen.add(model)
    for field in model.model_fields.values():
        for candidate in _types_in(field.annotation):
            if issubclass(candidate, BaseModel) and candidate not in seen:
                _models(candidate, seen)
    return seen


def _types_in(tp: object) -> list[type]:
    from typing import get_args

    found = [tp] if isinstance(tp, type) else []
    for arg in get_args(tp):
        found += _types_in(arg)
    return found


def test_every_key_has_a_description() -> None:
    undocumented = [
        f"{model.__name__}.{name}"
        for model in _models(Config, set())
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == []
