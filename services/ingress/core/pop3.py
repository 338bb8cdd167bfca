"""The POP3 server's state machine (RFC 1939, CAPA of RFC 2449, STLS of RFC 2595), without I/O.

The adapter feeds it command lines and the results of what only I/O can do
(the login check, the message content, the deletions) and sends what it
answers. Every transition is in `COMMANDS`: which commands each phase takes,
and the method that handles each. A `Step` is what to send and, optionally,
one piece of work for the adapter (`action`), whose outcome it reports back
through the matching method (`login_succeeded`, `retrieved`, `committed`, ...).

Deletions are only marks until QUIT moves the session into UPDATE; a session
that ends any other way deletes nothing (RFC 1939 section 6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

TlsMode = Literal["none", "starttls", "implicit"]

MAX_LOGIN_FAILURES = 3  # per session; policy counts them per client address too
MAX_ERRORS = 10  # unknown or malformed commands before the session is closed
MAX_COMMAND_LINE = 255  # RFC 2449 section 4: a command line is at most 255 octets


class Phase(Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


@dataclass(frozen=True)
class Reply:
    """`+OK text` or `-ERR text`; a multi-line reply's payload goes in `body`, unstuffed."""

    ok: bool
    text: str
    body: bytes | None = None

    def encode(self) -> bytes:
        line = ("+OK" if self.ok else "-ERR") + (f" {self.text}" if self.text else "")
        first = line.encode("utf-8") + b"\r\n"
        if self.body is None:
            return first
        return first + dot_stuffed(self.body)


def ok(text: str, body: bytes | None = None) -> Reply:
    return Reply(True, text, body)


def err(text: str) -> Reply:
    return Reply(False, text)


# --- work for the adapter ----------------------------------------------------------------


@dataclass(frozen=True)
class StartTls:
    """Send the reply, then start TLS; report with `tls_started`."""


@dataclass(frozen=True)
class CheckLogin:
    """Ask policy, lock the mailbox, list it; report with `login_*`."""

    user: str
    password: str


@dataclass(frozen=True)
class Retrieve:
    """Read message `index` (0-based); report its content with `retrieved`."""

    index: int
    top: int | None = None  # TOP's line count; None = the whole message (RETR)


@dataclass(frozen=True)
class Commit:
    """Delete these messages (0-based) for good; report with `committed`."""

    indexes: tuple[int, ...]


Action = StartTls | CheckLogin | Retrieve | Commit


@dataclass(frozen=True)
class Step:
    reply: Reply | None = None
    action: Action | None = None
    close: bool = False  # after sending the reply


@dataclass(frozen=True)
class DropMessage:
    """What the state machine knows of one message of the maildrop."""

    size: int
    uid: str


# --- the session -------------------------------------------------------------------------

Handler = Callable[["Pop3Session", str], Step]


@dataclass
class Pop3Session:
    tls_mode: TlsMode
    hostname: str = "localhost"
    phase: Phase = Phase.AUTHORIZATION
    tls: bool = False
    user: str | None = None
    drop: tuple[DropMessage, ...] = ()
    deleted: set[int] = field(default_factory=set)
    failures: int = 0
    errors: int = 0
    busy: bool = False  # an action is out; no command is taken until it is reported

    def __post_init__(self) -> None:
        if self.tls_mode == "implicit":
            self.tls = True

    @property
    def plaintext_login_allowed(self) -> bool:
        """USER/PASS after STLS or on implicit TLS; in the clear only where the listener
        says `tls: none` (the operator's choice, e.g. a loopback-only listener)."""
        return self.tls or self.tls_mode == "none"

    def greeting(self) -> Reply:
        return ok(f"{self.hostname} POP3 server ready")

    def receive(self, line: str) -> Step:
        if self.phase in (Phase.UPDATE, Phase.CLOSED) or self.busy:
            return Step(err("Command not expected now"))
        if len(line.encode("utf-8", "replace")) > MAX_COMMAND_LINE:
            return self._error("Command line too long")
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        handler = COMMANDS[self.phase].get(keyword)
        if handler is None:
            known = any(keyword in table for table in COMMANDS.values())
            return self._error("Command not valid in this state" if known else "Unknown command")
        return handler(self, argument)

    def _error(self, text: str) -> Step:
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self.phase = Phase.CLOSED
            return Step(err("Too many errors, closing connection"), close=True)
        return Step(err(text))

    def _begin(self, action: Action, reply: Reply | None = None) -> Step:
        self.busy = True
        return Step(reply, action)

    # --- AUTHORIZATION ---

    def _capa(self, argument: str) -> Step:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.phase is Phase.AUTHORIZATION:
            if self.plaintext_login_allowed:
                caps.append("USER")
            if self.tls_mode == "starttls" and not self.tls:
                caps.append("STLS")
        return Step(ok("Capability list follows", "".join(f"{c}\r\n" for c in caps).encode()))

    def _stls(self, argument: str) -> Step:
        if self.tls_mode != "starttls":
            return self._error("STLS not available on this port")
        if self.tls:
            return self._error("Command not permitted when TLS active")
        if argument:
            return self._error("Syntax: STLS")
        return self._begin(StartTls(), ok("Begin TLS negotiation"))

    def tls_started(self) -> None:
        """TLS is up: start over as RFC 2595 section 4 asks (nothing from before counts)."""
        self.busy = False
        self.tls = True
        self.user = None

    def tls_failed(self) -> Step:
        self.busy = False
        self.phase = Phase.CLOSED
        return Step(close=True)

    def _user(self, argument: str) -> Step:
        if not self.plaintext_login_allowed:
            return Step(err("[AUTH] Plaintext authentication disallowed before STLS"))
        if not argument:
            return self._error("Syntax: USER name")
        self.user = argument
        return Step(ok("Send PASS"))

    def _pass(self, argument: str) -> Step:
        if not self.plaintext_login_allowed:
            return Step(err("[AUTH] Plaintext authentication disallowed before STLS"))
        if self.user is None:
            return self._error("USER first")
        user, self.user = self.user, None
        return self._begin(CheckLogin(user, argument))

    def login_succeeded(self, drop: Sequence[DropMessage]) -> Step:
        self.busy = False
        self.phase = Phase.TRANSACTION
        self.drop = tuple(drop)
        self.deleted = set()
        count, octets = self._stat()
        return Step(ok(f"Logged in, {count} messages ({octets} octets)"))

    def login_failed(self, text: str, *, temporary: bool = False) -> Step:
        """A refused login (`[AUTH]`), or one that could not be checked (`[SYS/TEMP]`)."""
        self.busy = False
        if temporary:
            return Step(err(f"[SYS/TEMP] {text}"))
        self.failures += 1
        if self.failures >= MAX_LOGIN_FAILURES:
            self.phase = Phase.CLOSED
            return Step(err(f"[AUTH] {text}; too many failures, closing connection"), close=True)
        return Step(err(f"[AUTH] {text}"))

    def login_locked(self) -> Step:
        self.busy = False
        return Step(err("[IN-USE] Mailbox is in use by another POP3 session"))

    def _quit(self, argument: str) -> Step:
        if self.phase is Phase.AUTHORIZATION:
            self.phase = Phase.CLOSED
            return Step(ok(f"{self.hostname} POP3 server signing off"), close=True)
        self.phase = Phase.UPDATE
        return self._begin(Commit(tuple(sorted(self.deleted))))

    # --- TRANSACTION ---

    def _stat_command(self, argument: str) -> Step:
        if argument:
            return self._error("Syntax: STAT")
        count, octets = self._stat()
        return Step(ok(f"{count} {octets}"))

    def _stat(self) -> tuple[int, int]:
        live = [m for i, m in enumerate(self.drop) if i not in self.deleted]
        return len(live), sum(m.size for m in live)

    def _message(self, argument: str) -> int | Step:
        """The 0-based index of an existing, undeleted message, or the error step."""
        if not argument.isdigit() or not argument.isascii():
            return self._error("Invalid message number")
        number = int(argument)
        if not 1 <= number <= len(self.drop):
            return Step(err("No such message"))
        if number - 1 in self.deleted:
            return Step(err(f"Message {number} already deleted"))
        return number - 1

    def _scan(self, argument: str, what: Callable[[int], str], title: str) -> Step:
        if argument:
            index = self._message(argument)
            if isinstance(index, Step):
                return index
            return Step(ok(f"{index + 1} {what(index)}"))
        lines = [f"{i + 1} {what(i)}\r\n" for i in range(len(self.drop)) if i not in self.deleted]
        return Step(ok(title, "".join(lines).encode()))

    def _list(self, argument: str) -> Step:
        count, octets = self._stat()
        return self._scan(
            argument, lambda i: str(self.drop[i].size), f"{count} messages ({octets} octets)"
        )

    def _uidl(self, argument: str) -> Step:
        return self._scan(argument, lambda i: self.drop[i].uid, "Unique-ID listing follows")

    def _retr(self, argument: str) -> Step:
        index = self._message(argument)
        if isinstance(index, Step):
            return index
        return self._begin(Retrieve(index))

    def _top(self, argument: str) -> Step:
        number, _, lines = argument.partition(" ")
        if not lines.isdigit() or not lines.isascii():
            return self._error("Syntax: TOP message lines")
        index = self._message(number)
        if isinstance(index, Step):
            return index
        return self._begin(Retrieve(index, int(lines)))

    def retrieved(self, retrieve: Retrieve, content: bytes) -> Step:
        self.busy = False
        if retrieve.top is None:
            return Step(ok(f"{len(content)} octets", content))
        return Step(ok("Top of message follows", top(content, retrieve.top)))

    def retrieve_failed(self) -> Step:
        self.busy = False
        return Step(err("[SYS/TEMP] Message cannot be read now"))

    def _dele(self, argument: str) -> Step:
        index = self._message(argument)
        if isinstance(index, Step):
            return index
        self.deleted.add(index)
        return Step(ok(f"Message {index + 1} deleted"))

    def _rset(self, argument: str) -> Step:
        if argument:
            return self._error("Syntax: RSET")
        self.deleted = set()
        count, octets = self._stat()
        return Step(ok(f"Maildrop has {count} messages ({octets} octets)"))

    def _noop(self, argument: str) -> Step:
        return Step(ok("")) if not argument else self._error("Syntax: NOOP")

    # --- UPDATE ---

    def committed(self, done: bool) -> Step:
        """RFC 1939 section 6: -ERR when some deleted messages could not be removed."""
        self.busy = False
        self.phase = Phase.CLOSED
        left = len(self.drop) - (len(self.deleted) if done else 0)
        if not done:
            return Step(err("[SYS/TEMP] Some deleted messages not removed"), close=True)
        return Step(
            ok(f"{self.hostname} POP3 server signing off ({left} messages left)"), close=True
        )


COMMANDS: Mapping[Phase, Mapping[str, Handler]] = {
    Phase.AUTHORIZATION: {
        "CAPA": Pop3Session._capa,
        "STLS": Pop3Session._stls,
        "USER": Pop3Session._user,
        "PASS": Pop3Session._pass,
        "QUIT": Pop3Session._quit,
    },
    Phase.TRANSACTION: {
        "CAPA": Pop3Session._capa,
        "STAT": Pop3Session._stat_command,
        "LIST": Pop3Session._list,
        "UIDL": Pop3Session._uidl,
        "RETR": Pop3Session._retr,
        "TOP": Pop3Session._top,
        "DELE": Pop3Session._dele,
        "RSET": Pop3Session._rset,
        "NOOP": Pop3Session._noop,
        "QUIT": Pop3Session._quit,
    },
    Phase.UPDATE: {},
    Phase.CLOSED: {},
}


# --- message text ------------------------------------------------------------------------


def _lines(content: bytes) -> list[bytes]:
    lines = content.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def dot_stuffed(body: bytes) -> bytes:
    """RFC 1939 section 3: a line starting with '.' gets another; '.' CRLF ends it.

    The message's own bytes are kept otherwise, so a client reads back exactly
    what was stored."""
    stuffed = [b"." + line if line.startswith(b".") else line for line in _lines(body)]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


def top(content: bytes, count: int) -> bytes:
    """The header, the blank line, then `count` lines of the body (RFC 1939 TOP)."""
    lines = _lines(content)
    try:
        blank = lines.index(b"")
    except ValueError:
        return content  # no body at all: the header is the whole message
    kept = lines[: blank + 1 + count]
    return b"".join(line + b"\r\n" for line in kept)
