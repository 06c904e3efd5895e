"""``retrier worker``: a Dramatiq worker for the resend actor, inside this one process.

The ``dramatiq`` command forks worker children and forwards signals to them.
Heroku sends SIGTERM to every process of a dyno at once, so a child gets two
SIGTERMs, takes the second as "kill now", and abandons its in-flight hook calls.
Running ``dramatiq.Worker`` in this process avoids that: the first SIGTERM stops
fetching, in-flight calls finish, prefetched and delayed messages are requeued,
and any later SIGTERM is only logged.
"""

from __future__ import annotations

import logging
import threading

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from retrier.actors import Resender, declare_resend_actor
from retrier.broker import (
    MAINTENANCE_INTERVAL_S,
    broker_for,
    check_redis,
    connect_redis,
    run_maintenance,
)
from retrier.flood import AlertBudget
from retrier.hook import HookClient
from retrier.settings import Settings
from retrier.store import Store

logger = logging.getLogger(__name__)

#: Milliseconds the shutdown may take: Heroku kills a dyno 30 s after SIGTERM.
SHUTDOWN_TIMEOUT_MS = 25_000

#: Milliseconds an idle consumer waits between fetches (Dramatiq's default).
WORKER_TIMEOUT_MS = 1000


def run_worker(settings: Settings, *, threads: int, stop: threading.Event) -> None:
    """Process resend jobs with ``threads`` threads until ``stop`` is set, then shut down cleanly."""
    settings.require("RESEND_HOOK_URL")
    assert settings.resend_hook_url is not None

    client = connect_redis(settings.redis_url, tls_insecure=settings.redis_tls_insecure)
    check_redis(client)
    broker = broker_for(settings)
    store = Store(client, settings.redis_prefix, dedup_ttl_s=settings.dedup_ttl_s)
    secret = settings.resend_hook_secret.get_secret_value() if settings.resend_hook_secret else None
    hook = HookClient(
        settings.resend_hook_url, secret=secret, timeout_s=settings.resend_hook_timeout_s
    )
    budget = AlertBudget(store.client, settings.redis_prefix, limit=settings.alert_limit)
    resender = Resender(store, hook, budget=budget, recipient_limit=settings.recipient_daily_limit)
    declare_resend_actor(broker, resender)

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT_MS)
    worker.start()
    logger.info(
        "worker started",
        extra={"threads": threads, "signed": secret is not None, "broker": type(broker).__name__},
    )

    if isinstance(broker, RedisBroker):
        threading.Thread(
            target=_maintain, args=(broker, stop), name="maintenance", daemon=True
        ).start()

    stop.wait()

    logger.info("worker stopping: finishing in-flight resends")
    worker.stop(timeout=SHUTDOWN_TIMEOUT_MS)
    in_flight = sum(thread.is_alive() for thread in worker.workers)
    if in_flight:
        logger.warning(
            "worker stopped with resends still in flight",
            extra={
                "threads": in_flight,
                "fix": "none needed: their messages return to the queue once the broker heartbeat times out",
            },
        )
    hook.close()
    broker.close()
    logger.info("worker stopped")


def _maintain(broker: RedisBroker, stop: threading.Event) -> None:
    # RabbitMQ needs none of this: it returns a dead connection's jobs itself.
    while not stop.wait(MAINTENANCE_INTERVAL_S):
        try:
            run_maintenance(broker)
        except redis.RedisError as error:
            logger.warning(
                "queue maintenance skipped: redis unavailable", extra={"error": str(error)}
            )
