"""`mailbus user hash` and the password check policy runs for SMTP AUTH."""

from __future__ import annotations

import io

import pytest
from argon2 import PasswordHasher, Type

from libs.common.mail.userhash import (
    PasswordInputError,
    hash_password,
    read_password,
    user_hash_command,
    verify_password,
)
from ops import cli

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)


def test_hash_is_argon2id_and_verifies() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(encoded, "correct horse")
    assert not verify_password(encoded, "Correct horse")


@pytest.mark.parametrize(
    "encoded",
    [
        None,
        "",
        "$argon2id$v=19$m=65536,t=3,p=4$...",  # a placeholder, as in the example config
        "plain-text-password",
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I).hash("pw"),
    ],
    # Named, not shown: the argon2i hash has a fresh salt at every collection.
    ids=["none", "empty", "placeholder", "plain-text", "argon2i"],
)
def test_nothing_but_a_matching_argon2id_hash_verifies(encoded: str | None) -> None:
    assert not verify_password(encoded, "pw")


def test_cheap_parameters_come_from_the_hash() -> None:
    assert verify_password(CHEAP.hash("pw"), "pw")


def test_read_password_from_a_pipe() -> None:
    assert read_password(io.StringIO("s3cret pass\nignored\n")) == "s3cret pass"
    with pytest.raises(PasswordInputError):
        read_password(io.StringIO("\n"))
    with pytest.raises(PasswordInputError):
        read_password(io.StringIO(""))


def test_user_hash_command(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert user_hash_command(io.StringIO("pw\n"), out) == 0
    assert verify_password(out.getvalue().strip(), "pw")
    assert user_hash_command(io.StringIO(""), io.StringIO()) == 1
    assert "empty" in capsys.readouterr().err


def test_cli_has_the_subcommand() -> None:
    args = cli.build_parser().parse_args(["user", "hash"])
    assert args.user_command == "hash"
