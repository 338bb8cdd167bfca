"""The front door's pure parts: command lines, deadlines and the streaming content scan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingress.core import commands, smuggling
from services.ingress.core.deadlines import Deadlines, TransferClock
from services.ingress.core.received import count_received
from services.ingress.core.scan import ContentScan


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (b"MAIL FROM:<a@b.test>", commands.Command("MAIL", "FROM:<a@b.test>")),
        (b"noop", commands.Command("NOOP", None)),
        (b"EHLO  h\xc3\xa9.test  ", commands.Command("EHLO", "h\u00e9.test")),
        (b"", commands.BAD_SYNTAX),
        (b"A\rB", commands.BAD_SYNTAX),  # never echoed back
        (b"\xffHELO x", commands.BAD_SYNTAX),
        (b"MAIL FROM:<\xff@example.org>", commands.NOT_UTF8),
        (b"EHLO h\xffst.example", commands.NOT_UTF8),
        (b"RCPT TO:<a@b.test> NOTIFY=\xff", commands.NOT_UTF8),
        (b"MAIL FROM:<a\x1b[31m@b.test>", commands.CONTROL_CHARACTER),
        (b"MAIL FROM:<a@b.test>\xc2\x85", commands.CONTROL_CHARACTER),  # C1 NEL, as UTF-8
    ],
)
def test_parse(line: bytes, parsed: commands.Command | str) -> None:
    assert commands.parse(line) == parsed


@pytest.mark.parametrize(
    ("parameters", "ok"),
    [(" SIZE=100", True), ("", True), (" BODY=8BITMIME", True), (" SIZE=\u00b2", False),
     (" SIZE=\u0661\u0662", False), (" size=", False), (" SIZE=-1", False)],
)  # fmt: skip
def test_size_takes_ascii_digits_only(parameters: str, ok: bool) -> None:
    assert commands.size_parameter_ok(parameters) is ok


def test_printable_escapes_controls() -> None:
    assert commands.printable("a\rb\x1b[0m\u0085c\td") == "a\\x0db\\x1b[0m\\x85c\td"


def test_transfer_must_keep_its_rate() -> None:
    clock = TransferClock(Deadlines(300, piece_timeout=10, min_rate=100), started=0.0)
    assert clock.wait(now=0.0) == 10  # never more than one piece's wait
    clock.add(500)  # 5 s more bought by 500 octets
    assert clock.wait(now=12.0) == pytest.approx(3.0)
    assert clock.wait(now=15.0) <= 0  # 15 s for 500 octets: slower than 100 B/s
    unlimited = TransferClock(Deadlines(300, piece_timeout=10), started=0.0)
    assert unlimited.wait(now=10_000.0) == 10


MESSAGES = st.lists(
    st.sampled_from(
        [b"Received: x\r\n", b"received:y\n", b"Subject: s\r\n", b" folded\r\n", b"\r\n",
         b"body\r\n", b"\r", b"\n", b"\x00", b"Recei", b"ved: z\r\n", b"text"]
    ),
    max_size=12,
)  # fmt: skip


@given(MESSAGES, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20))
def test_scan_in_pieces_is_the_scan_of_the_whole(parts: list[bytes], cuts: list[int]) -> None:
    message = b"".join(parts)
    scan = ContentScan()
    position = 0
    for cut in cuts * (len(message) + 1):
        if position >= len(message):
            break
        scan.feed(message[position : position + cut])
        position += cut
    scan.finish()
    assert scan.size == len(message)
    assert scan.received_headers == count_received(message)
    assert scan.refusal() == smuggling.refusal(message)
