"""`mailbus config check --non-default` (postconf -n), `mailbus config get KEY`
(postconf KEY) and the argon2id check of password_hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.config.cli import config_check, config_get

CONFIG = """\
server: {hostname: mx.example.test, local_domains: [example.test]}
queue: {retry_interval: 10m}
users:
  - {address: alice@example.test, password_hash: "HASH"}
"""
ARGON2ID = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def _file(tmp_path: Path, password_hash: str = ARGON2ID) -> str:
    path = tmp_path / "mailbus.yaml"
    path.write_text(CONFIG.replace("HASH", password_hash))
    return str(path)


def test_non_default_shows_only_what_was_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert config_check(_file(tmp_path), non_default=True) == 0
    out = capsys.readouterr().out
    assert "retry_interval: 10m" in out and "hostname: mx.example.test" in out
    assert "bounce_after" not in out and "listeners" not in out and "relay" not in out
    assert "password_hash: '***'" in out and ARGON2ID not in out
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert config_check(str(empty), non_default=True) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("queue.retry_interval", "10m\n"),
        ("queue.bounce_after", "5d\n"),
        ("relay.smtp_auth", "true\n"),
        ("tls.cert_file", "null\n"),
        ("listeners.1.name", "submission\n"),
        ("users.0.password_hash", "***\n"),
    ],
)
def test_get_prints_one_effective_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, shown: str
) -> None:
    assert config_get(_file(tmp_path), key) == 0
    assert capsys.readouterr().out == shown


def test_get_names_an_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert config_get(_file(tmp_path), "queue.retry") == 2
    assert "no key 'queue.retry' (at 'retry')" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", ["$2b$12$abcdefghijklmnopqrstuv", "$argon2i$v=19$m=1,t=1,p=1$a$b", "plain"]
)
def test_a_password_hash_that_is_not_argon2id_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    assert config_check(_file(tmp_path, bad)) == 2
    err = capsys.readouterr().err
    assert "users.0.password_hash: not an argon2id hash" in err, err
    assert bad not in err or bad == "plain"  # no more of the secret than its kind
