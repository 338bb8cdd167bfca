"""The POP3 state machine, table-driven: (setup, command) -> reply, action, phase."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.ingress.core.pop3 import (
    COMMANDS,
    MAX_ERRORS,
    MAX_LOGIN_FAILURES,
    CheckLogin,
    Commit,
    DropMessage,
    Phase,
    Pop3Session,
    Reply,
    Retrieve,
    StartTls,
    Step,
    TlsMode,
    dot_stuffed,
    top,
)

DROP = (DropMessage(120, "uid-1"), DropMessage(200, "uid-2"), DropMessage(80, "uid-3"))


def session(
    tls_mode: TlsMode = "starttls",
    tls: bool = True,
    logged_in: bool = False,
    deleted: tuple[int, ...] = (),
) -> Pop3Session:
    s = Pop3Session(tls_mode=tls_mode, hostname="pop.test")
    s.tls = s.tls or tls
    if logged_in:
        s.login_succeeded(DROP)
        s.deleted = set(deleted)
    return s


@dataclass(frozen=True)
class Case:
    name: str
    command: str
    reply: str | None  # the reply's first line, or None when an action comes first
    action: object = None
    phase: Phase = Phase.AUTHORIZATION
    body: bytes | None = None
    tls_mode: TlsMode = "starttls"
    tls: bool = True
    logged_in: bool = False
    deleted: tuple[int, ...] = ()
    close: bool = False


CASES = [
    # --- AUTHORIZATION: CAPA and STLS
    Case("capa before stls", "CAPA", "+OK Capability list follows", tls=False,
         body=b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nSTLS\r\n"),
    Case("capa after stls", "capa", "+OK Capability list follows",
         body=b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUSER\r\n"),
    Case("capa on a tls:none port", "CAPA", "+OK Capability list follows", tls_mode="none",
         tls=False, body=b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUSER\r\n"),
    Case("capa in transaction", "CAPA", "+OK Capability list follows", logged_in=True,
         phase=Phase.TRANSACTION, body=b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"),
    Case("stls", "STLS", "+OK Begin TLS negotiation", action=StartTls(), tls=False),
    Case("stls twice", "STLS", "-ERR Command not permitted when TLS active"),
    Case("stls on tls:none", "STLS", "-ERR STLS not available on this port", tls_mode="none",
         tls=False),
    Case("stls on implicit", "STLS", "-ERR STLS not available on this port",
         tls_mode="implicit"),
    Case("stls with argument", "STLS now", "-ERR Syntax: STLS", tls=False),
    Case("stls in transaction", "STLS", "-ERR Command not valid in this state", logged_in=True,
         phase=Phase.TRANSACTION),
    # --- AUTHORIZATION: USER / PASS
    Case("user before stls", "USER alice", "-ERR [AUTH] Plaintext authentication disallowed "
         "before STLS", tls=False),
    Case("pass before stls", "PASS x", "-ERR [AUTH] Plaintext authentication disallowed "
         "before STLS", tls=False),
    Case("user on tls:none", "USER alice", "+OK Send PASS", tls_mode="none", tls=False),
    Case("user on implicit tls", "USER alice", "+OK Send PASS", tls_mode="implicit", tls=False),
    Case("user without name", "USER", "-ERR Syntax: USER name"),
    Case("pass without user", "PASS secret", "-ERR USER first"),
    Case("user in transaction", "USER bob", "-ERR Command not valid in this state",
         logged_in=True, phase=Phase.TRANSACTION),
    Case("unknown", "XYZZY", "-ERR Unknown command"),
    Case("noop before login", "NOOP", "-ERR Command not valid in this state"),
    Case("stat before login", "STAT", "-ERR Command not valid in this state"),
    Case("quit before login", "QUIT", "+OK pop.test POP3 server signing off",
         phase=Phase.CLOSED, close=True),
    Case("line too long", "USER " + "a" * 300, "-ERR Command line too long"),
    # --- TRANSACTION
    Case("stat", "STAT", "+OK 3 400", logged_in=True, phase=Phase.TRANSACTION),
    Case("stat after dele", "STAT", "+OK 2 200", logged_in=True, phase=Phase.TRANSACTION,
         deleted=(1,)),
    Case("stat with argument", "STAT 1", "-ERR Syntax: STAT", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("list", "LIST", "+OK 3 messages (400 octets)", logged_in=True, phase=Phase.TRANSACTION,
         body=b"1 120\r\n2 200\r\n3 80\r\n"),
    Case("list skips deleted", "LIST", "+OK 2 messages (200 octets)", logged_in=True,
         phase=Phase.TRANSACTION, deleted=(1,), body=b"1 120\r\n3 80\r\n"),
    Case("list one", "LIST 2", "+OK 2 200", logged_in=True, phase=Phase.TRANSACTION),
    Case("list deleted", "LIST 2", "-ERR Message 2 already deleted", logged_in=True,
         phase=Phase.TRANSACTION, deleted=(1,)),
    Case("list out of range", "LIST 4", "-ERR No such message", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("list zero", "LIST 0", "-ERR No such message", logged_in=True, phase=Phase.TRANSACTION),
    Case("list not a number", "LIST +1", "-ERR Invalid message number", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("list unicode digit", "LIST \u0661", "-ERR Invalid message number", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("uidl", "UIDL", "+OK Unique-ID listing follows", logged_in=True,
         phase=Phase.TRANSACTION, body=b"1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n"),
    Case("uidl one", "UIDL 3", "+OK 3 uid-3", logged_in=True, phase=Phase.TRANSACTION),
    Case("retr", "RETR 2", None, action=Retrieve(1), logged_in=True, phase=Phase.TRANSACTION),
    Case("retr deleted", "RETR 2", "-ERR Message 2 already deleted", logged_in=True,
         phase=Phase.TRANSACTION, deleted=(1,)),
    Case("retr missing argument", "RETR", "-ERR Invalid message number", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("top", "TOP 1 5", None, action=Retrieve(0, 5), logged_in=True,
         phase=Phase.TRANSACTION),
    Case("top without count", "TOP 1", "-ERR Syntax: TOP message lines", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("top negative", "TOP 1 -1", "-ERR Syntax: TOP message lines", logged_in=True,
         phase=Phase.TRANSACTION),
    Case("dele", "DELE 1", "+OK Message 1 deleted", logged_in=True, phase=Phase.TRANSACTION),
    Case("dele twice", "DELE 1", "-ERR Message 1 already deleted", logged_in=True,
         phase=Phase.TRANSACTION, deleted=(0,)),
    Case("rset", "RSET", "+OK Maildrop has 3 messages (400 octets)", logged_in=True,
         phase=Phase.TRANSACTION, deleted=(0, 2)),
    Case("noop", "NOOP", "+OK", logged_in=True, phase=Phase.TRANSACTION),
    Case("quit commits", "QUIT", None, action=Commit((0, 2)), logged_in=True,
         phase=Phase.UPDATE, deleted=(2, 0)),
    Case("quit with nothing deleted", "QUIT", None, action=Commit(()), logged_in=True,
         phase=Phase.UPDATE),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_command(case: Case) -> None:
    s = session(case.tls_mode, case.tls, case.logged_in, case.deleted)
    step = s.receive(case.command)
    first = step.reply.encode().split(b"\r\n")[0].decode() if step.reply else None
    assert first == case.reply
    assert step.action == case.action
    assert s.phase is case.phase
    assert step.close is case.close
    if case.body is not None:
        assert step.reply is not None and step.reply.body == case.body


def test_every_command_of_rfc_1939_is_in_the_table() -> None:
    assert set(COMMANDS[Phase.AUTHORIZATION]) == {"CAPA", "STLS", "USER", "PASS", "QUIT"}
    assert set(COMMANDS[Phase.TRANSACTION]) == {
        "CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "QUIT",
    }  # fmt: skip
    assert not COMMANDS[Phase.UPDATE] and not COMMANDS[Phase.CLOSED]


def test_login_flow() -> None:
    s = session(tls=False)
    assert s.receive("STLS").action == StartTls()
    assert s.busy
    s.tls_started()
    assert s.receive("USER alice@example.test").reply == Reply(True, "Send PASS")
    step = s.receive("PASS with spaces inside")
    assert step == Step(None, CheckLogin("alice@example.test", "with spaces inside"))
    assert s.receive("NOOP").reply == Reply(False, "Command not expected now")
    step = s.login_succeeded(DROP)
    assert step.reply == Reply(True, "Logged in, 3 messages (400 octets)")
    assert s.phase is Phase.TRANSACTION


def test_stls_forgets_a_user_given_before() -> None:
    s = session(tls_mode="starttls", tls=False)
    s.receive("STLS")
    s.tls_started()
    assert s.receive("PASS secret").reply == Reply(False, "USER first")


@pytest.mark.parametrize(
    ("temporary", "reply", "failures"),
    [
        (False, "-ERR [AUTH] Authentication credentials invalid", 1),
        (True, "-ERR [SYS/TEMP] Authentication credentials invalid", 0),
    ],
)
def test_login_failure(temporary: bool, reply: str, failures: int) -> None:
    s = session()
    s.receive("USER alice")
    s.receive("PASS wrong")
    step = s.login_failed("Authentication credentials invalid", temporary=temporary)
    assert step.reply is not None and step.reply.encode() == reply.encode() + b"\r\n"
    assert s.failures == failures and s.phase is Phase.AUTHORIZATION and not s.busy
    assert s.receive("PASS again").reply == Reply(False, "USER first")


def test_too_many_login_failures_close_the_session() -> None:
    s = session()
    steps = []
    for _ in range(MAX_LOGIN_FAILURES):
        s.receive("USER alice")
        s.receive("PASS wrong")
        steps.append(s.login_failed("Authentication credentials invalid"))
    assert [st.close for st in steps] == [False] * (MAX_LOGIN_FAILURES - 1) + [True]
    assert s.phase is Phase.CLOSED


def test_locked_mailbox() -> None:
    s = session()
    s.receive("USER alice")
    s.receive("PASS right")
    step = s.login_locked()
    assert step.reply == Reply(False, "[IN-USE] Mailbox is in use by another POP3 session")
    assert s.phase is Phase.AUTHORIZATION and s.failures == 0


def test_too_many_errors_close_the_session() -> None:
    s = session()
    steps = [s.receive("BOGUS") for _ in range(MAX_ERRORS)]
    assert steps[-1].close and not any(st.close for st in steps[:-1])
    assert s.phase is Phase.CLOSED


@pytest.mark.parametrize(
    ("done", "reply"),
    [
        (True, b"+OK pop.test POP3 server signing off (1 messages left)\r\n"),
        (False, b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"),
    ],
)
def test_update(done: bool, reply: bytes) -> None:
    s = session(logged_in=True, deleted=(0, 1))
    s.receive("QUIT")
    step = s.committed(done)
    assert step.reply is not None and step.reply.encode() == reply
    assert step.close and s.phase is Phase.CLOSED


MESSAGE = b"Subject: hi\r\nFrom: a@b\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n"


@pytest.mark.parametrize(
    ("retrieve", "wire"),
    [
        (
            Retrieve(0),
            b"+OK 51 octets\r\nSubject: hi\r\nFrom: a@b\r\n\r\nline 1\r\n..line 2\r\n"
            b"line 3\r\n.\r\n",
        ),
        (Retrieve(0, 0), b"+OK Top of message follows\r\nSubject: hi\r\nFrom: a@b\r\n\r\n.\r\n"),
        (
            Retrieve(0, 2),
            b"+OK Top of message follows\r\nSubject: hi\r\nFrom: a@b\r\n\r\nline 1\r\n"
            b"..line 2\r\n.\r\n",
        ),
        (Retrieve(0, 99), b"+OK Top of message follows\r\n" + dot_stuffed(MESSAGE)),
    ],
)
def test_retrieved(retrieve: Retrieve, wire: bytes) -> None:
    s = session(logged_in=True)
    step = s.retrieved(retrieve, MESSAGE)
    assert step.reply is not None and step.reply.encode() == wire
    assert not s.busy


@pytest.mark.parametrize(
    ("body", "stuffed"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"..x\r\n", b"...x\r\n.\r\n"),
        (b"a\r\n\r\n", b"a\r\n\r\n.\r\n"),
    ],
)
def test_dot_stuffing(body: bytes, stuffed: bytes) -> None:
    assert dot_stuffed(body) == stuffed


def test_top_of_a_message_without_body() -> None:
    assert top(b"Subject: x\r\n", 3) == b"Subject: x\r\n"
