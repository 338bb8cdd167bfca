"""Password hashes of local accounts: argon2id to store, verify to log in.

`mailbus user hash` prints what goes into `users[].password_hash`; policy
verifies SMTP AUTH (and later POP3) logins against it. Verification costs tens
of milliseconds of CPU on purpose, so callers in an event loop run it in a
thread (argon2-cffi releases the GIL while hashing).
"""

from __future__ import annotations

import functools
import getpass
import sys
from typing import TextIO

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from libs.common.contract.errors import MailbusError

# argon2-cffi's defaults are RFC 9106's second recommendation (m=64 MiB, t=3, p=4).
_hasher = PasswordHasher(type=Type.ID)


@functools.cache
def _dummy_hash() -> str:
    # Verified when the account is unknown or cannot log in, so that a wrong user name
    # costs as much time as a wrong password and timing does not reveal who exists.
    return _hasher.hash("mailbus: no such account")


class PasswordInputError(MailbusError):
    """No usable password was given on the terminal or stdin."""


def hash_password(password: str) -> str:
    if not password:
        raise PasswordInputError("the password is empty")
    return _hasher.hash(password)


def is_argon2id(encoded: str) -> bool:
    return encoded.startswith("$argon2id$")


def verify_password(encoded: str | None, password: str) -> bool:
    """True only for a matching argon2 hash; a malformed or missing hash never matches."""
    if encoded is None or not is_argon2id(encoded):
        _spend_the_same_time(password)
        return False
    try:
        return _hasher.verify(encoded, password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        _spend_the_same_time(password)
        return False


def _spend_the_same_time(password: str) -> None:
    try:
        _hasher.verify(_dummy_hash(), password)
    except VerificationError:
        pass


def read_password(stdin: TextIO = sys.stdin, confirm: bool = True) -> str:
    """From the terminal without echo (typed twice), or the first line of piped stdin."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Again: ") != first:
            raise PasswordInputError("the two passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise PasswordInputError("the password is empty")
    return password


def user_hash_command(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """`mailbus user hash`: print the argon2id hash of a password read from the user."""
    try:
        password = read_password(stdin)
    except (PasswordInputError, EOFError, KeyboardInterrupt) as exc:
        print(f"mailbus user hash: {exc or 'no password'}", file=sys.stderr)
        return 1
    print(hash_password(password), file=stdout)
    return 0
