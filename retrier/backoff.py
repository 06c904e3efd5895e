"""Backoff arithmetic: exponential delays, and reading a retry time off a 429.

Neither the Octopods API nor a resend hook documents how a 429 says when to come
back, so :func:`parse_retry_at` accepts each common form:

- a ``Retry-After`` header, as delta seconds or an HTTP-date (RFC 9110, 10.2.3);
- an ``X-RateLimit-Reset`` or ``RateLimit-Reset`` header, as epoch seconds or
  delta seconds;
- a timestamp in the JSON body under one of :data:`BODY_RETRY_KEYS`, at the top
  level or inside an ``error`` object, as ISO-8601 text or a Unix time in seconds
  or milliseconds.

All times here are Unix seconds (float) and all durations seconds, unless a name
says otherwise.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

logger = logging.getLogger(__name__)

#: Body keys that may carry the retry time, in the order they are tried.
BODY_RETRY_KEYS = (
    "retry_at",
    "retryAt",
    "retry_after",
    "retryAfter",
    "retry_timestamp",
    "reset_at",
    "resetAt",
    "rate_limit_reset",
    "reset",
)

#: A retry time further ahead than this is capped: a clock error or a typo in a
#: response must not stop retrier for days.
MAX_RETRY_WAIT_S = 3600.0

#: A retry time that is already past (clock skew) still waits this long.
MIN_RETRY_WAIT_S = 1.0

# Numbers at or above these thresholds are read as Unix times (ms, then s);
# smaller ones as a delay in seconds. 1e11 s is the year 5138, and 1e8 s is
# 1973, so neither range overlaps a plausible delay or a current timestamp.
_EPOCH_MS_THRESHOLD = 1e11
_EPOCH_S_THRESHOLD = 1e8


def exponential_delay(
    attempt: int, *, initial_s: float, max_s: float, jitter: float = 0.1
) -> float:
    """Return the wait before the retry that follows ``attempt``.

    The wait doubles with each attempt, starting at ``initial_s`` after attempt 1,
    is capped at ``max_s``, and is spread by up to ``jitter`` (a fraction) either
    way so that workers retrying together drift apart.
    """
    exponent = max(attempt - 1, 0)
    base = min(initial_s * 2.0 ** min(exponent, 62), max_s)
    spread = base * jitter
    return max(0.0, base + random.uniform(-spread, spread))


def parse_retry_at(headers: Mapping[str, str], body: Any, *, now: float) -> float | None:
    """Return the Unix time a 429 asks the client to wait for, or None.

    The result is clamped to ``now + MIN_RETRY_WAIT_S`` … ``now + MAX_RETRY_WAIT_S``;
    a clamped value is logged as a warning. ``headers`` must be case-insensitive
    (``httpx.Headers`` is). ``body`` is the decoded JSON, or anything else.
    """
    found = _from_headers(headers, now) or _from_body(body, now)
    if found is None:
        return None

    value, source = found
    if value > now + MAX_RETRY_WAIT_S:
        logger.warning(
            "retry time capped",
            extra={"source": source, "wait_s": round(value - now, 1), "cap_s": MAX_RETRY_WAIT_S},
        )
        return now + MAX_RETRY_WAIT_S
    return max(value, now + MIN_RETRY_WAIT_S)


def _from_headers(headers: Mapping[str, str], now: float) -> tuple[float, str] | None:
    retry_after = headers.get("retry-after")
    if retry_after:
        value = _parse_delta_or_http_date(retry_after.strip(), now)
        if value is not None:
            return value, "Retry-After"

    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        raw = headers.get(name)
        if raw:
            value = _parse_number_time(raw.strip(), now)
            if value is not None:
                return value, name
    return None


def _from_body(body: Any, now: float) -> tuple[float, str] | None:
    if not isinstance(body, Mapping):
        return None

    candidates: list[Mapping[str, Any]] = [body]
    nested = body.get("error")
    if isinstance(nested, Mapping):
        candidates.append(nested)

    for mapping in candidates:
        for key in BODY_RETRY_KEYS:
            if key in mapping:
                value = parse_time_value(mapping[key], now)
                if value is not None:
                    return value, f"body.{key}"
    return None


def parse_time_value(raw: Any, now: float) -> float | None:
    """Read one retry time given as ISO-8601 text or a number; None if neither.

    Numbers (or numeric text) are Unix milliseconds, Unix seconds or a delay in
    seconds, told apart by size. Booleans are not numbers here.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        try:
            return _number_to_time(float(raw), now)
        except OverflowError:  # an int beyond float range
            return None
    if isinstance(raw, str):
        text = raw.strip()
        numeric = _parse_number_time(text, now)
        if numeric is not None:
            return numeric
        return _parse_iso(text)
    return None


def _parse_delta_or_http_date(text: str, now: float) -> float | None:
    if text.isascii() and text.isdigit():
        return now + float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_number_time(text: str, now: float) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return _number_to_time(number, now)


def _number_to_time(number: float, now: float) -> float | None:
    if number != number or number < 0 or number in (float("inf"), float("-inf")):
        return None
    if number >= _EPOCH_MS_THRESHOLD:
        return number / 1000.0
    if number >= _EPOCH_S_THRESHOLD:
        return number
    return now + number


def _parse_iso(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
