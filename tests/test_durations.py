"""Tests of parsing and formatting the rules file's durations."""

from __future__ import annotations

import pytest

from retrier.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        (" 10m ", 600.0),
        ("007s", 7.0),
    ],
)
def test_parse_duration_valid(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "5x",
        "30",
        "",
        "s",
        "-5m",
        "5 m",
        "5M",
        "1h30m",
        "1e3s",
        ".5s",
        "5.m",
        "5mm",
        "\uff15m",
        "inf",
    ],
)
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number followed by s, m, h or d") as caught:
        parse_duration(text)

    assert repr(text) in str(caught.value)


def test_parse_duration_message_example() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("5x")

    assert str(caught.value) == (
        "got '5x', expected a number followed by s, m, h or d, such as 30s or 5m"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30.0, "30s"),
        (1800.0, "30m"),
        (5400.0, "90m"),
        (86400.0, "1d"),
        (7200.0, "2h"),
        (0.0, "0s"),
        (6.5, "6.5s"),
        (90.0, "90s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.0, 1.0, 6.5, 61.0, 3600.0, 5400.0, 90000.0, 1e7])
def test_format_duration_parses_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
