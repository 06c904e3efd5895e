"""Tests for retrier.backoff: reading a retry time off a 429, and exponential delays."""

from __future__ import annotations

import logging
import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrier.backoff import (
    BODY_RETRY_KEYS,
    MAX_RETRY_WAIT_S,
    MIN_RETRY_WAIT_S,
    exponential_delay,
    parse_retry_at,
    parse_time_value,
)

MOMENT = datetime(2026, 4, 24, 10, 0, 0, tzinfo=UTC)
NOW = MOMENT.timestamp()


def http_date(offset_s: float) -> str:
    return format_datetime(MOMENT + timedelta(seconds=offset_s), usegmt=True)


def iso(offset_s: float) -> str:
    return (MOMENT + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


# (case id, headers, body, expected retry time minus NOW)
RETRY_FORMS: list[tuple[str, dict[str, str], Any, float]] = [
    ("retry-after seconds", {"Retry-After": "120"}, None, 120),
    ("retry-after padded", {"Retry-After": " 120 "}, None, 120),
    ("retry-after http-date", {"Retry-After": http_date(300)}, None, 300),
    ("x-ratelimit-reset epoch", {"X-RateLimit-Reset": str(int(NOW) + 90)}, None, 90),
    ("x-ratelimit-reset delta", {"X-RateLimit-Reset": "45"}, None, 45),
    ("ratelimit-reset delta", {"RateLimit-Reset": "30"}, None, 30),
    ("body iso z", {}, {"retry_at": iso(300)}, 300),
    ("body iso offset", {}, {"retry_at": "2026-04-24T12:05:00+02:00"}, 300),
    ("body iso naive is utc", {}, {"retry_at": "2026-04-24T10:05:00"}, 300),
    ("body iso fraction", {}, {"retry_at": "2026-04-24T10:05:00.500Z"}, 300.5),
    ("body epoch seconds", {}, {"retry_at": int(NOW) + 60}, 60),
    ("body epoch seconds text", {}, {"retry_at": str(int(NOW) + 60)}, 60),
    ("body epoch seconds float", {}, {"retry_at": NOW + 60.25}, 60.25),
    ("body epoch ms", {}, {"retry_at": (int(NOW) + 60) * 1000}, 60),
    ("body epoch ms text", {}, {"retry_at": str((int(NOW) + 60) * 1000)}, 60),
    ("body delay seconds", {}, {"retry_at": 30}, 30),
    ("body delay float", {}, {"retry_at": 12.5}, 12.5),
    ("body nested error", {}, {"error": {"retry_at": iso(200)}}, 200),
    ("header before body", {"Retry-After": "10"}, {"retry_at": iso(500)}, 10),
    ("bad retry-after, reset", {"Retry-After": "soon", "X-RateLimit-Reset": "40"}, None, 40),
    ("bad retry-after, body", {"Retry-After": "soon"}, {"retry_at": iso(50)}, 50),
    ("bad body key, next key", {}, {"retry_at": "soon", "reset": 70}, 70),
]


@pytest.mark.parametrize(
    ("headers", "body", "offset_s"),
    [case[1:] for case in RETRY_FORMS],
    ids=[case[0] for case in RETRY_FORMS],
)
def test_retry_at_forms(headers: dict[str, str], body: Any, offset_s: float) -> None:
    retry_at = parse_retry_at(httpx.Headers(headers), body, now=NOW)

    assert retry_at == pytest.approx(NOW + offset_s)


@pytest.mark.parametrize("key", BODY_RETRY_KEYS)
def test_retry_at_body_keys(key: str) -> None:
    """Each documented body key is read, at the top level."""
    assert parse_retry_at(httpx.Headers(), {key: iso(120)}, now=NOW) == pytest.approx(NOW + 120)


@pytest.mark.parametrize("key", BODY_RETRY_KEYS)
def test_retry_at_nested_keys(key: str) -> None:
    """Each documented body key is read inside an "error" object."""
    body = {"error": {key: int(NOW) + 120}}

    assert parse_retry_at(httpx.Headers(), body, now=NOW) == pytest.approx(NOW + 120)


def test_retry_at_header_case() -> None:
    """Header names match without case, as httpx.Headers provides."""
    headers = httpx.Headers({"RETRY-AFTER": "15"})

    assert parse_retry_at(headers, None, now=NOW) == pytest.approx(NOW + 15)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Retry-After": "86400"}, None),
        ({"Retry-After": http_date(7 * 86400)}, None),
        ({}, {"retry_at": iso(2 * 86400)}),
        ({}, {"retry_at": (int(NOW) + 10 * 86400) * 1000}),
    ],
    ids=["delta", "http-date", "body iso", "body epoch ms"],
)
def test_retry_at_capped(
    headers: dict[str, str], body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry time beyond MAX_RETRY_WAIT_S is capped and logged as a warning."""
    caplog.set_level(logging.WARNING, logger="retrier.backoff")

    retry_at = parse_retry_at(httpx.Headers(headers), body, now=NOW)

    assert retry_at == NOW + MAX_RETRY_WAIT_S
    assert [record.getMessage() for record in caplog.records] == ["retry time capped"]
    assert caplog.records[0].levelno == logging.WARNING


def test_retry_at_cap_names_source(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="retrier.backoff")

    parse_retry_at(httpx.Headers({"Retry-After": "86400"}), None, now=NOW)

    assert caplog.records[0].source == "Retry-After"  # type: ignore[attr-defined]
    assert caplog.records[0].wait_s == 86400  # type: ignore[attr-defined]


def test_retry_at_exactly_max(caplog: pytest.LogCaptureFixture) -> None:
    """A wait of exactly MAX_RETRY_WAIT_S is kept without a warning."""
    caplog.set_level(logging.WARNING, logger="retrier.backoff")
    headers = httpx.Headers({"Retry-After": str(int(MAX_RETRY_WAIT_S))})

    assert parse_retry_at(headers, None, now=NOW) == NOW + MAX_RETRY_WAIT_S
    assert caplog.records == []


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Retry-After": "0"}, None),
        ({"Retry-After": http_date(-600)}, None),
        ({"X-RateLimit-Reset": str(int(NOW) - 30)}, None),
        ({}, {"retry_at": iso(-3600)}),
        ({}, {"retry_at": (int(NOW) - 5) * 1000}),
        ({}, {"retry_at": 0}),
        ({}, {"retry_at": 0.2}),
    ],
    ids=["zero", "past http-date", "past reset", "past iso", "past epoch ms", "zero body", "0.2s"],
)
def test_retry_at_past(headers: dict[str, str], body: Any) -> None:
    """A retry time already past, or too close, still waits MIN_RETRY_WAIT_S."""
    assert parse_retry_at(httpx.Headers(headers), body, now=NOW) == NOW + MIN_RETRY_WAIT_S


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, None),
        ({}, {}),
        ({}, {"error": "rate limited"}),
        ({}, {"other": 60}),
        ({}, [{"retry_at": 60}]),
        ({}, "60"),
        ({}, 60),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "1.5e"}, None),
        ({"Retry-After": ""}, None),
        ({"X-RateLimit-Reset": "abc"}, None),
        ({"X-RateLimit-Reset": "-10"}, None),
        ({"X-Other": "60"}, None),
        ({}, {"retry_at": "tomorrow"}),
        ({}, {"retry_at": ""}),
        ({}, {"retry_at": None}),
        ({}, {"retry_at": [60]}),
        ({}, {"retry_at": {"seconds": 60}}),
        ({}, {"retry_at": -60}),
        ({}, {"error": {"retry_at": "later"}}),
        ({}, {"error": [{"retry_at": 60}]}),
    ],
    ids=[
        "nothing",
        "empty body",
        "error text",
        "unknown key",
        "list body",
        "text body",
        "number body",
        "retry-after word",
        "retry-after negative",
        "retry-after junk",
        "retry-after empty",
        "reset word",
        "reset negative",
        "other header",
        "body word",
        "body empty text",
        "body null",
        "body list",
        "body object",
        "body negative",
        "nested word",
        "error list",
    ],
)
def test_retry_at_garbage(headers: dict[str, str], body: Any) -> None:
    """A response with no readable retry time gives None."""
    assert parse_retry_at(httpx.Headers(headers), body, now=NOW) is None


@pytest.mark.parametrize("value", [True, False])
def test_retry_at_booleans(value: bool) -> None:
    """JSON true and false are not numbers of seconds."""
    assert parse_retry_at(httpx.Headers(), {"retry_at": value}, now=NOW) is None


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, "nan", "inf", "-inf", "Infinity", "NaN"],
    ids=["nan", "inf", "-inf", "nan text", "inf text", "-inf text", "Infinity", "NaN text"],
)
def test_retry_at_not_finite(value: Any) -> None:
    assert parse_retry_at(httpx.Headers(), {"retry_at": value}, now=NOW) is None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_reset_header_not_finite(value: str) -> None:
    assert parse_retry_at(httpx.Headers({"X-RateLimit-Reset": value}), None, now=NOW) is None


def test_retry_at_plain_mapping() -> None:
    """A plain dict with lower-case header names works too."""
    assert parse_retry_at({"retry-after": "20"}, None, now=NOW) == pytest.approx(NOW + 20)


def test_retry_after_superscript_digit() -> None:
    """A Retry-After of a non-ASCII digit is unreadable, not an exception."""
    assert parse_retry_at({"retry-after": "\u00b2"}, None, now=NOW) is None


def test_retry_at_huge_integer() -> None:
    """A body integer too large for a float is unreadable, not an exception."""
    assert parse_retry_at({}, {"retry_at": 10**400}, now=NOW) is None


@pytest.mark.parametrize(
    ("raw", "offset_s"),
    [
        (30, 30),
        ("30", 30),
        (" 2026-04-24T10:01:00Z ", 60),
        (int(NOW) + 5, 5),
        ((int(NOW) + 5) * 1000, 5),
        (-2 + int(NOW), -2),
    ],
    ids=["delay", "delay text", "iso padded", "epoch s", "epoch ms", "past"],
)
def test_time_value(raw: Any, offset_s: float) -> None:
    """parse_time_value reads one value and does not clamp it."""
    assert parse_time_value(raw, NOW) == pytest.approx(NOW + offset_s)


@pytest.mark.parametrize("raw", [True, None, "later", {"at": 1}, [5]])
def test_time_value_unreadable(raw: Any) -> None:
    assert parse_time_value(raw, NOW) is None


def test_delay_first_attempt() -> None:
    """Attempt 1 without jitter waits exactly the initial delay."""
    assert exponential_delay(1, initial_s=30, max_s=1800, jitter=0) == 30


def test_delay_doubles() -> None:
    delays = [exponential_delay(n, initial_s=30, max_s=10_000, jitter=0) for n in range(1, 6)]

    assert delays == [30, 60, 120, 240, 480]


def test_delay_capped() -> None:
    assert exponential_delay(7, initial_s=30, max_s=1800, jitter=0) == 1800


def test_delay_huge_attempt() -> None:
    """A very large attempt number is capped, not an overflow."""
    assert exponential_delay(10_000, initial_s=30, max_s=1800, jitter=0) == 1800


@pytest.mark.parametrize("attempt", [0, -3])
def test_delay_attempt_below_one(attempt: int) -> None:
    """Attempts below 1 wait like attempt 1."""
    assert exponential_delay(attempt, initial_s=30, max_s=1800, jitter=0) == 30


def test_delay_jitter_bounds() -> None:
    """With jitter 0.1, every wait lies within 10% of the base either way."""
    random.seed(1234)
    delays = [exponential_delay(3, initial_s=25, max_s=1000, jitter=0.1) for _ in range(500)]

    assert min(delays) >= 90
    assert max(delays) <= 110


def test_delay_jitter_spreads() -> None:
    """Jitter makes waits differ, so workers retrying together drift apart."""
    random.seed(1234)
    delays = {exponential_delay(2, initial_s=50, max_s=1000, jitter=0.1) for _ in range(50)}

    assert len(delays) > 40


@pytest.mark.parametrize(("pick", "expected"), [(min, 90.0), (max, 110.0)])
def test_delay_jitter_extremes(monkeypatch: pytest.MonkeyPatch, pick: Any, expected: float) -> None:
    """The jitter range is base * (1 - jitter) to base * (1 + jitter)."""
    monkeypatch.setattr(random, "uniform", lambda low, high: pick(low, high))

    assert exponential_delay(2, initial_s=50, max_s=1000) == pytest.approx(expected)


def test_delay_jitter_after_cap() -> None:
    """Jitter spreads the capped wait too, within its bounds."""
    random.seed(99)
    delays = [exponential_delay(20, initial_s=30, max_s=600, jitter=0.2) for _ in range(200)]

    assert min(delays) >= 480
    assert max(delays) <= 720


def test_delay_never_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    """A jitter above 1 cannot produce a negative wait."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low)

    assert exponential_delay(1, initial_s=30, max_s=600, jitter=2.0) == 0.0


# Text without the Unicode category No ("other number", such as "²"), because
# str.isdigit() accepts those and float() does not: test_retry_after_superscript_digit
# covers that case.
_TEXT = st.text(st.characters(exclude_categories=["Cs", "No"]), max_size=30)

# Integers stay within float range: test_retry_at_huge_integer covers larger ones.
_NUMBERS = st.one_of(
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=0, max_value=4_000_000_000_000),
)

_TIME_TEXT = st.one_of(
    _TEXT,
    _NUMBERS.map(str),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(datetime.isoformat),
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ).map(lambda moment: format_datetime(moment, usegmt=True)),
)

_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _TIME_TEXT)

_KEYS = st.one_of(st.sampled_from([*BODY_RETRY_KEYS, "error"]), _TEXT)

_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=5)
    ),
    max_leaves=12,
)

_HEADERS = st.dictionaries(
    st.sampled_from(["retry-after", "x-ratelimit-reset", "ratelimit-reset", "x-other"]),
    _TIME_TEXT,
    max_size=4,
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    headers=_HEADERS,
    body=_JSON,
    now=st.floats(min_value=1e9, max_value=4e9),
)
def test_retry_at_property(headers: dict[str, str], body: Any, now: float) -> None:
    """parse_retry_at never raises, and returns None or a time within the clamp bounds."""
    logger = logging.getLogger("retrier.backoff")
    logger.disabled = True
    try:
        retry_at = parse_retry_at(headers, body, now=now)
    finally:
        logger.disabled = False

    if retry_at is not None:
        assert now + MIN_RETRY_WAIT_S <= retry_at <= now + MAX_RETRY_WAIT_S
