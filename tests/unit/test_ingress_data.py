"""DataAssembler: the message of one DATA command, within the size and line limits."""

from __future__ import annotations

import io

import pytest

from services.ingress.core.data import DataAssembler, DataState

LINE_LIMIT = 1001


class Counted(io.BytesIO):
    """A sink that keeps what it was given (for the content) and counts it (for the bound)."""

    written = 0

    def write(self, data: bytes, /) -> int:  # type: ignore[override]
        self.written += len(data)
        return super().write(data)


class Assembled(DataAssembler):
    def content(self) -> bytes:
        assert isinstance(self.sink, io.BytesIO)
        return self.sink.getvalue()

    @property
    def kept(self) -> int:
        """What went to the sink: the assembler itself holds nothing."""
        assert isinstance(self.sink, Counted)
        return self.sink.written


def assembler_of(size_limit: int | None) -> Assembled:
    return Assembled(size_limit, LINE_LIMIT, Counted())


def assemble(pieces: list[bytes], size_limit: int | None = None) -> Assembled:
    assembler = assembler_of(size_limit)
    ended = [assembler.feed(p) for p in pieces]
    assert ended[-1] and not any(ended[:-1])
    return assembler


@pytest.mark.parametrize(
    ("pieces", "content"),
    [
        ([b"hello\r\n", b".\r\n"], b"hello\r\n"),
        ([b"..dot\r\n", b".\r\n"], b".dot\r\n"),  # dot-stuffing undone
        ([b".\r\n"], b""),
        # a fragment ending the line, then a lone dot: only now is the message over
        ([b"ab", b"c\r\n", b".\r\n"], b"abc\r\n"),
        # a line that is "." only because of a fragment before it is content, not the end
        ([b"x", b".\r\n", b".\r\n"], b"x.\r\n"),
        ([b"a\nb\r\n", b".\r\n"], b"a\nb\r\n"),  # bare LF kept for the smuggling check
    ],
)
def test_content(pieces: list[bytes], content: bytes) -> None:
    assembler = assemble(pieces)
    assert assembler.state is DataState.NOMINAL
    assert assembler.content() == content
    assert assembler.size == len(content)


@pytest.mark.parametrize(
    ("size", "state"),
    [(100, DataState.NOMINAL), (101, DataState.TOO_MUCH)],
)
def test_size_limit_boundary(size: int, state: DataState) -> None:
    body = b"a" * (size - 2) + b"\r\n"
    assembler = assemble([body, b".\r\n"], size_limit=100)
    assert assembler.state is state
    assert assembler.size == size


def test_quoting_dots_do_not_count() -> None:
    assembler = assemble([b"." + b"a" * 98 + b"\r\n", b".\r\n"], size_limit=100)
    assert (assembler.state, assembler.size) == (DataState.NOMINAL, 100)


def test_nothing_is_kept_past_the_limit() -> None:
    assembler = assembler_of(1000)
    line = b"x" * 998 + b"\r\n"
    for _ in range(5000):
        assert not assembler.feed(line)
    assert assembler.feed(b".\r\n")
    assert assembler.state is DataState.TOO_MUCH
    assert assembler.kept <= 1000  # nothing past the limit went to the spool
    assert assembler.size == 5000 * 1000


def test_an_endless_line_is_not_kept() -> None:
    """One line without CRLF arrives as fragments: none of them is held."""
    assembler = assembler_of(10_000)
    for _ in range(10_000):
        assert not assembler.feed(b"y" * 1000)
    assert assembler.kept <= 10_000
    assert not assembler.feed(b"\r\n")
    assert assembler.feed(b".\r\n")
    assert assembler.state is DataState.TOO_MUCH


def test_long_line_within_the_size_limit() -> None:
    assembler = assemble([b"z" * 1000, b"z" * 10 + b"\r\n", b"ok\r\n", b".\r\n"], 10**6)
    assert assembler.state is DataState.TOO_LONG
    assert assembler.kept == 1000  # the first fragment, before the line was too long


def test_too_much_wins_over_too_long() -> None:
    assembler = assemble([b"z" * 1000, b"z" * 1000, b"\r\n", b".\r\n"], size_limit=1500)
    assert assembler.state is DataState.TOO_MUCH


def test_no_limit() -> None:
    assembler = assemble([b"q" * 998 + b"\r\n"] * 50 + [b".\r\n"], size_limit=None)
    assert (assembler.state, assembler.size) == (DataState.NOMINAL, 50_000)
