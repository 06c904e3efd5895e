"""Counting round trips to Redis at the client's connection.

redis-py writes each request, or a whole pipeline, with one call of
``Connection.send_packed_command`` and then reads the replies before it writes
again; each such call is one round trip. (A TCP proxy cannot tell: Redis starts
answering a large pipeline while the client is still writing it.)
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.connection import Connection


class CountingConnection(Connection):
    """A Redis connection that counts the requests it writes."""

    round_trips = 0
    _lock = threading.Lock()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        with CountingConnection._lock:
            CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)

    @classmethod
    def reset(cls) -> int:
        """Return the round trips counted so far and start again from zero."""
        with cls._lock:
            counted, cls.round_trips = cls.round_trips, 0
        return counted


def counting_client(host: str, port: int) -> redis.Redis:
    """Return a Redis client whose every connection counts its round trips."""
    pool = redis.ConnectionPool(host=host, port=port, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)
