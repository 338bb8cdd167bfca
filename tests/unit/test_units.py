"""Durations and sizes as operators write them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.common.config import parse_duration, parse_size
from libs.common.config.units import format_duration, format_size

KB, MB, GB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("4h", timedelta(hours=4)),
        ("5d", timedelta(days=5)),
        ("1w", timedelta(days=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("30M", timedelta(minutes=30)),
        ("0s", timedelta(0)),
        ("0", timedelta(0)),
        ("45", timedelta(seconds=45)),
        (45, timedelta(seconds=45)),
        (0, timedelta(0)),
        (2.5, timedelta(seconds=2.5)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_parse_duration(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "s", "5x", "5 fortnights", "1h1h", "h1", "-5s", "1h-", "1,5h", -1, True, None, [5]],
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_duration_error_says_how_to_write_one() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("5 fortnights")
    assert "'5 fortnights'" in str(info.value)
    assert "30m" in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=4), "4h"),
        (timedelta(days=5), "5d"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=1, milliseconds=500), "1s500ms"),
    ],
)
def test_format_duration_reads_back(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("100B", 100),
        ("100b", 100),
        ("512KB", 512 * KB),
        ("512K", 512 * KB),
        ("512KiB", 512 * KB),
        ("512kb", 512 * KB),
        ("25MB", 25 * MB),
        ("25 MB", 25 * MB),
        ("25m", 25 * MB),
        ("25MiB", 25 * MB),
        ("1GB", GB),
        ("1G", GB),
        ("1gib", GB),
        ("1.5KB", 1536),
        (float(2048), 2048),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "MB", "25XB", "25 megabytes", "iB", "5iB", "-1", -1, 1.5, True, None, "1e3"]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, 0), (1000, 1000), (1536, 1536), (1024, "1KB"), (25 * MB, "25MB"), (GB, "1GB")],
)
def test_format_size(value: int, shown: object) -> None:
    assert format_size(value) == shown
    assert parse_size(shown) == value
