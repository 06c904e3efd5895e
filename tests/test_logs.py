"""Tests for retrier.logs: the logfmt line and configure_logging."""

from __future__ import annotations

import calendar
import io
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from retrier.logs import LogfmtFormatter, configure_logging
from retrier.redact import redactor
from tests.conftest import API_KEY

# One key=value pair of a logfmt line: a bare value, or a quoted one with
# backslash escapes.
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _unescape(match: re.Match[str]) -> str:
    return "\n" if match[1] == "n" else match[1]


def parse_logfmt(line: str) -> dict[str, str]:
    """Return the pairs of a logfmt line, in order, with quoted values unescaped."""
    pairs = {}
    for key, raw in _PAIR.findall(line):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", _unescape, raw[1:-1])
        pairs[key] = raw
    return pairs


def make_record(
    message: str = "resend scheduled",
    *args: Any,
    level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    """Build a record the way a logger call would, without emitting it anywhere."""
    logger = logging.getLogger("retrier.actors")
    return logger.makeRecord(logger.name, level, __file__, 1, message, args, exc_info, extra=extra)


def format_line(*args: Any, **kwargs: Any) -> str:
    return LogfmtFormatter().format(make_record(*args, **kwargs))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the root handlers and logger levels that configure_logging replaces."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    names = ("dramatiq", "httpx", "httpcore")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def test_line_fields() -> None:
    """A line has time, level, logger and event, then the extra fields, in that order."""
    extra = {"message_id": 3851827, "rule": "service-unavailable", "attempt": 1, "delay_s": 30}

    pairs = parse_logfmt(format_line(extra=extra))

    assert list(pairs) == [
        "time",
        "level",
        "logger",
        "event",
        "message_id",
        "rule",
        "attempt",
        "delay_s",
    ]


def test_line_values() -> None:
    extra = {"message_id": 3851827, "rule": "service-unavailable", "delay_s": 30}

    pairs = parse_logfmt(format_line(level=logging.WARNING, extra=extra))

    assert pairs["level"] == "warning"
    assert pairs["logger"] == "retrier.actors"
    assert pairs["event"] == "resend scheduled"
    assert pairs["message_id"] == "3851827"
    assert pairs["rule"] == "service-unavailable"
    assert pairs["delay_s"] == "30"


def test_line_time() -> None:
    """time is the record's creation time in UTC, with milliseconds and a Z."""
    record = make_record()
    record.created = 1777025942.123
    record.msecs = 123.0

    pairs = parse_logfmt(LogfmtFormatter().format(record))

    assert pairs["time"] == "2026-04-24T10:19:02.123Z"


def test_line_time_now() -> None:
    stamp = parse_logfmt(format_line())["time"]

    moment = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(moment - time.time()) < 5


def test_line_arguments() -> None:
    """%-style arguments are merged into the event."""
    assert parse_logfmt(format_line("skipped %d items", 3))["event"] == "skipped 3 items"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("", '""'),
        ("line\nbreak", '"line\\nbreak"'),
        ("tab\there", '"tab\there"'),
        ("back\\slash x", '"back\\\\slash x"'),
        (42, "42"),
        (None, "None"),
    ],
    ids=[
        "plain",
        "space",
        "quote",
        "equals",
        "empty",
        "newline",
        "tab",
        "backslash",
        "int",
        "none",
    ],
)
def test_line_quoting(value: Any, written: str) -> None:
    """Values with spaces, quotes, '=' or line breaks are quoted and escaped."""
    line = format_line(extra={"note": value})

    assert line.endswith(f" note={written}")


def test_line_quoting_round_trip() -> None:
    """A quoted value reads back as it was logged."""
    value = 'failure "temporarily unavailable" code=131026\nretry'

    assert parse_logfmt(format_line(extra={"reason": value}))["reason"] == value


def test_one_line() -> None:
    """A line break in the event or a field does not split the line."""
    line = format_line("first\nsecond", extra={"detail": "a\nb"})

    assert "\n" not in line


def test_private_fields_hidden() -> None:
    """Extra fields whose name starts with "_" are not written."""
    assert "_internal" not in format_line(extra={"_internal": "x"})


def test_exception_fields() -> None:
    """An exception adds its type and message, and a one-line traceback."""
    try:
        raise ValueError("bad value")
    except ValueError:
        exc_info = sys.exc_info()

    line = format_line("hook call failed", level=logging.ERROR, exc_info=exc_info)

    pairs = parse_logfmt(line)
    assert pairs["error"] == "ValueError: bad value"
    assert pairs["traceback"].startswith("Traceback (most recent call last):")
    assert "\n" not in line


def test_phone_masked_in_event() -> None:
    line = format_line("resend for +15557654321 failed")

    assert "+15557654321" not in line
    assert parse_logfmt(line)["event"] == "resend for +1555***4321 failed"


def test_phone_masked_in_field() -> None:
    line = format_line(extra={"phone": "+1 555-765-4321"})

    assert "765-4321" not in line
    assert parse_logfmt(line)["phone"] == "+1555***4321"


def test_secret_masked() -> None:
    """A registered secret that slipped into a message or a field is filtered."""
    redactor.add_secrets([API_KEY])

    line = format_line(f"rejected key {API_KEY}", extra={"header": API_KEY})

    assert API_KEY not in line
    assert parse_logfmt(line)["event"] == "rejected key [Filtered]"
    assert parse_logfmt(line)["header"] == "[Filtered]"


def test_secret_masked_in_exception() -> None:
    redactor.add_secrets([API_KEY])
    try:
        raise RuntimeError(f"bad key {API_KEY}")
    except RuntimeError:
        exc_info = sys.exc_info()

    line = format_line("poll failed", level=logging.ERROR, exc_info=exc_info)

    assert API_KEY not in line


@pytest.mark.usefixtures("restore_logging")
def test_configure_writes_logfmt() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)

    logging.getLogger("retrier.poller").info("poll cycle", extra={"seen": 100})

    pairs = parse_logfmt(stream.getvalue())
    assert pairs["event"] == "poll cycle"
    assert pairs["logger"] == "retrier.poller"
    assert pairs["seen"] == "100"


@pytest.mark.usefixtures("restore_logging")
def test_configure_level() -> None:
    """Lines below the configured level are dropped."""
    stream = io.StringIO()
    configure_logging("WARNING", stream)

    logging.getLogger("retrier.poller").info("poll cycle")

    assert stream.getvalue() == ""


@pytest.mark.usefixtures("restore_logging")
def test_configure_replaces_handlers() -> None:
    """Configuring twice writes each line once, to the latest stream."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", first)
    configure_logging("INFO", second)

    logging.getLogger("retrier.poller").info("poll cycle")

    assert first.getvalue() == ""
    assert second.getvalue().count("\n") == 1


@pytest.mark.usefixtures("restore_logging")
def test_configure_quiets_libraries() -> None:
    """httpx and httpcore log from WARNING, and dramatiq from WARNING even at DEBUG."""
    configure_logging("DEBUG", io.StringIO())

    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.WARNING
    assert logging.getLogger("dramatiq").level == logging.WARNING


@pytest.mark.usefixtures("restore_logging")
def test_configure_dramatiq_errors_only() -> None:
    """At ERROR, dramatiq's warnings are dropped too."""
    configure_logging("ERROR", io.StringIO())

    assert logging.getLogger("dramatiq").level == logging.ERROR
