"""Flood control for alerts: a per-rule hourly budget, with one summary of the rest.

A rule that suddenly matches thousands of failures (a template disabled, a
number range ported away) must not bury Sentry. Each alert kind and rule may
send ``limit`` events per UTC hour, across every process. Every alert counts
against its rule in Redis; the ones past the limit are not sent, and the first
poll cycle of the next hour reports them in one summary event.
"""

from __future__ import annotations

import logging
import time

import redis

from retrier import alerts
from retrier.errors import StoreError
from retrier.keys import Keys

logger = logging.getLogger(__name__)

#: Seconds an hour's counts are kept: long enough for the next hour's summary.
COUNTS_TTL_S = 3 * 3600


class AlertBudget:
    """Counts alerts per kind, rule and UTC hour in Redis.

    Args:
        client: the Redis client.
        prefix: the key prefix.
        limit: events allowed per kind and rule in one hour.
    """

    def __init__(self, client: redis.Redis, prefix: str, *, limit: int) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.limit = limit
        self._summarised_hour = 0

    def allow(self, kind: str, rule: str, *, now: float | None = None) -> bool:
        """Count one alert; return False when its rule is over this hour's budget.

        When Redis fails, the alert is allowed, because a lost alert is worse
        than an extra one.
        """
        pipe = self.client.pipeline(transaction=False)
        index = self.stage(pipe, kind, rule, now=now or time.time())
        try:
            replies = pipe.execute()
        except redis.RedisError as error:
            logger.warning(
                "alert budget unavailable: redis", extra={"rule": rule, "error": str(error)}
            )
            return True
        return self.within(replies[index])

    def stage(self, pipe: redis.client.Pipeline, kind: str, rule: str, *, now: float) -> int:
        """Queue one alert's count on ``pipe``; return the index of the reply to pass to :meth:`within`."""
        key = self.keys.alerts(int(now // 3600))
        index = len(pipe)
        pipe.hincrby(key, f"sent:{kind}:{rule}", 1)
        pipe.expire(key, COUNTS_TTL_S)
        return index

    def within(self, count: int) -> bool:
        """Return whether an alert whose count this hour is ``count`` may be sent."""
        return int(count) <= self.limit

    def report_previous_hour(self, *, now: float | None = None) -> None:
        """Send one summary event for the alerts suppressed in the previous hour, once.

        Cheap to call every cycle: after the first call in an hour it does
        nothing until the next hour.
        """
        hour = int((now or time.time()) // 3600)
        if hour == self._summarised_hour:
            return
        key = self.keys.alerts(hour - 1)
        try:
            raw = self.client.hgetall(key)
            counts = {
                _text(name).removeprefix("sent:"): int(value) - self.limit
                for name, value in raw.items()
                if _text(name).startswith("sent:") and int(value) > self.limit
            }
            first = bool(counts) and bool(self.client.hsetnx(key, "summarised", "1"))
        except redis.RedisError as error:
            raise StoreError(f"Redis failed while reading the alert budget: {error}") from error
        self._summarised_hour = hour
        if first:
            start = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime((hour - 1) * 3600))
            alerts.alert_suppressed(hour_start=start, counts=counts)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
