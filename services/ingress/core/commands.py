"""One SMTP command line as the wire delivers it: checked before anything reads its text.

The session's command loop (adapters/smtp.py) hands every line here first. A
line that is not a command mailbus can safely look at is answered here, so no
later code meets bytes that are not UTF-8, a verb that is not ASCII letters or
a control character (which would end up in a log line, a reply or an event).
"""

from __future__ import annotations

from dataclasses import dataclass

# Postfix's smtpd_junk_command_limit counts these: they cost the server and move no mail.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "HELP"})

BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
NOT_UTF8 = "501 5.5.2 Syntax error: the command is not valid UTF-8"
CONTROL_CHARACTER = "501 5.5.2 Syntax error: control character in the command"
UNKNOWN_COMMAND = "502 5.5.2 Error: command not recognized"
# RFC 2920 section 3.1: a client may only send several commands at once where PIPELINING
# was offered, and never the message before the 354 reply (Postfix's words and code).
SYNCHRONIZATION = "554 5.5.0 Error: SMTP protocol synchronization"
TIMEOUT = "421 4.4.2 Error: timeout exceeded, closing connection"
TOO_MANY_JUNK = "421 4.7.0 Too many NOOP, RSET, VRFY or HELP commands, closing connection"
EARLY_TALKER = "554 5.5.0 Error: talking before the greeting, closing connection"
NON_ASCII_ADDRESS = "553 5.6.7 Non-ASCII address without the SMTPUTF8 parameter"
NOT_A_NUMBER = "501 5.5.4 Syntax error: SIZE takes a number of ASCII digits"


@dataclass(frozen=True)
class Command:
    verb: str  # upper case, ASCII letters
    arg: str | None  # stripped; None when there is none


def parse(line: bytes) -> Command | str:
    """The command of one line (its CRLF already taken off), or the reply refusing it."""
    if not line.strip():
        return BAD_SYNTAX
    verb_bytes, _, arg_bytes = line.partition(b" ")
    if not verb_bytes.isascii() or not verb_bytes.isalpha():
        # Not a command at all ("\xffHELO", "A\rB", "MAIL:"): never echoed.
        return BAD_SYNTAX
    try:
        arg = arg_bytes.decode("utf-8").strip(" \t")
    except UnicodeDecodeError:
        return NOT_UTF8
    if any(_is_control(ch) for ch in arg):
        return CONTROL_CHARACTER
    return Command(verb_bytes.decode("ascii").upper(), arg or None)


def _is_control(ch: str) -> bool:
    # Tab is allowed (some clients separate parameters with it); C0, DEL and C1 are not.
    code = ord(ch)
    return (code < 0x20 and ch != "\t") or 0x7F <= code <= 0x9F


def ascii_number(text: str) -> bool:
    """Digits 0-9 only: str.isdigit() also takes "²" and "١٢" (which int() reads as 12)."""
    return bool(text) and text.isascii() and text.isdigit()


def size_parameter_ok(parameters: str) -> bool:
    """MAIL's SIZE= value, if there is one, is a plain ASCII number (RFC 1870)."""
    for word in parameters.split():
        key, sep, value = word.partition("=")
        if key.upper() == "SIZE" and sep and not ascii_number(value):
            return False
    return True


def printable(text: str) -> str:
    """Text from a client made safe for a log line or a reply: controls as \\xNN escapes."""
    return "".join(f"\\x{ord(ch):02x}" if _is_control(ch) else ch for ch in text)
