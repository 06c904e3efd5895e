"""The poller lease: one ``retrier poll`` polls at a time, however many run.

Listing shares Octopods' per-key rate limit with template sends, so two
pollers must not double the listing rate. Every poller tries to hold one
Redis key, the lease, which expires after ``lease_s``; the holder renews it
every third of that from a thread of its own, and gives it up on shutdown. A
poller that is killed outright stops renewing, so a standby, which tries every
third of the lease too, takes over within one lease period.
"""

from __future__ import annotations

import logging
import threading

import redis

from retrier import scripts
from retrier.keys import Keys

logger = logging.getLogger(__name__)


class PollerLease:
    """Holds, renews and releases the poller lease for ``holder``.

    Args:
        client: the Redis client.
        prefix: the key prefix.
        holder: this poller's id (host or dyno name and process id).
        lease_s: seconds the lease lasts without renewal.
    """

    def __init__(self, client: redis.Redis, prefix: str, *, holder: str, lease_s: float) -> None:
        self.client = client
        self.key = Keys(prefix).lease
        self.holder = holder
        self.lease_s = lease_s
        self._lease = client.register_script(scripts.LEASE)
        self._release = client.register_script(scripts.RELEASE)
        self._held = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._held.is_set()

    @property
    def retry_s(self) -> float:
        """Seconds between attempts to take or renew the lease."""
        return self.lease_s / 3

    def try_hold(self) -> bool:
        """Take or renew the lease; return whether this poller holds it.

        The first success starts the renewal thread. When Redis fails the
        lease counts as lost: polling without it could double the listing rate.
        """
        try:
            held = bool(self._lease(keys=[self.key], args=[self.holder, int(self.lease_s * 1000)]))
        except redis.RedisError as error:
            logger.warning("poller lease unavailable: redis", extra={"error": str(error)})
            held = False

        if held and not self.held:
            logger.info(
                "poller lease taken: this poller is active",
                extra={"poller": self.holder, "lease_s": self.lease_s},
            )
        elif not held and self.held:
            logger.warning(
                "poller lease lost: this poller is standing by", extra={"poller": self.holder}
            )
        if held:
            self._held.set()
            self._start_renewer()
        else:
            self._held.clear()
        return held

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._renewer = threading.Thread(target=self._renew, name="poller-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.retry_s):
            if not self.try_hold():
                return

    def release(self) -> None:
        """Stop renewing and give the lease up, so that a standby takes over at once."""
        self._stop.set()
        if not self.held:
            return
        self._held.clear()
        try:
            self._release(keys=[self.key], args=[self.holder])
        except redis.RedisError as error:
            logger.warning(
                "poller lease not released: it expires on its own", extra={"error": str(error)}
            )
            return
        logger.info("poller lease released", extra={"poller": self.holder})
