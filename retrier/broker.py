"""The Dramatiq broker and the Redis connections retrier uses.

The Redis broker notices a worker that died without requeueing its messages
when the worker's heartbeat is older than ``heartbeat_timeout`` and a
"maintenance" pass runs. Dramatiq runs one on 0.1 % of broker calls by default,
so a killed worker's messages can take many minutes to come back. retrier
shortens the timeout, runs maintenance on 5 % of calls, and has every worker
run it on each queue every ``MAINTENANCE_INTERVAL_S`` as well, so the messages
come back at most that long after the heartbeat times out.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name

from retrier.actors import QUEUE_NAME, Job, resend_message
from retrier.errors import BrokerError, StoreError
from retrier.keys import Keys
from retrier.settings import Settings

logger = logging.getLogger(__name__)

#: Milliseconds without a heartbeat after which a worker counts as dead. Busy
#: workers keep beating: the delay-queue consumer calls Redis at least every
#: second, and the longest hook call (RESEND_HOOK_TIMEOUT) is capped at 25 s.
HEARTBEAT_TIMEOUT_MS = 45_000

#: Broker calls, per million, that also run queue maintenance.
MAINTENANCE_CHANCE = 50_000

#: Seconds between the maintenance passes each worker runs on every queue.
MAINTENANCE_INTERVAL_S = 15.0


def connect_redis(url: str, *, tls_insecure: bool = False, **options: Any) -> redis.Redis:
    """Return a Redis client for ``url`` with timeouts suited to a long-running worker.

    With ``tls_insecure`` a ``rediss://`` server's certificate is not verified,
    as Heroku Redis requires (it presents a self-signed certificate). The
    keyword is passed to the connection pool, where redis-py honours it.
    """
    settings: dict[str, Any] = {
        "socket_timeout": 15,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        **options,
    }
    if url.startswith("rediss://") and tls_insecure:
        settings["ssl_cert_reqs"] = "none"
    return redis.Redis.from_url(url, **settings)


def check_redis(client: redis.Redis, *, attempts: int = 3, wait_s: float = 2.0) -> None:
    """Ping Redis, trying ``attempts`` times; raise StoreError naming the fix if it never answers.

    Used at start-up, where an unreachable Redis is most often a wrong REDIS_URL.
    Once running, both processes ride out Redis outages instead.
    """
    for attempt in range(1, attempts + 1):
        try:
            client.ping()
            return
        except redis.RedisError as error:
            if attempt == attempts:
                raise StoreError(f"cannot reach Redis: {str(error).rstrip('.')}") from error
            logger.warning(
                "redis unreachable at start-up, trying again",
                extra={"attempt": attempt, "error": str(error)},
            )
            time.sleep(wait_s)


def build_broker(url: str, prefix: str, *, tls_insecure: bool = False) -> RedisBroker:
    """Return a Redis broker whose keys live under ``{prefix}:dramatiq``.

    A ready client is passed in because ``RedisBroker(url=…, ssl_cert_reqs=…)``
    silently drops the TLS keyword.
    """
    return RedisBroker(  # type: ignore[no-untyped-call]  # dramatiq's broker is untyped
        client=connect_redis(url, tls_insecure=tls_insecure),
        namespace=Keys(prefix).broker_namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


def run_maintenance(broker: RedisBroker) -> None:
    """Requeue, on every declared queue, the jobs of workers whose heartbeat timed out.

    This sends the dispatch script's read-only ``qsize`` command with
    maintenance forced on (Dramatiq 2.x, ``brokers/redis/dispatch.lua``).
    """
    dispatch = broker.scripts["dispatch"]
    queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
    for queue_name in sorted(queues):
        args = [
            "qsize",
            current_millis(),
            queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            1,  # maintenance on
            broker._max_unpack_size(),  # type: ignore[no-untyped-call]
        ]
        dispatch(args=args, keys=[broker.namespace])


def build_rabbitmq_broker(url: str) -> dramatiq.Broker:
    """Return a RabbitMQ broker for ``url`` (``amqp://`` or ``amqps://``).

    Publisher confirms are on, so that an enqueue returns only once RabbitMQ
    has the message. RabbitMQ itself puts back the unacknowledged messages of a
    worker whose connection drops, so no heartbeat tuning is needed.
    """
    from dramatiq.brokers.rabbitmq import RabbitmqBroker  # pika is needed only here

    return RabbitmqBroker(url=url, confirm_delivery=True)


def check_rabbitmq(url: str, *, attempts: int = 3, wait_s: float = 2.0) -> None:
    """Connect to RabbitMQ, trying ``attempts`` times; raise BrokerError naming the fix if it never answers.

    Used at start-up, where an unreachable broker is most often a wrong BROKER_URL.
    """
    import pika

    # pika logs each failed connection with a traceback; the error below says it once.
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    try:
        _connect_rabbitmq(pika, url, attempts=attempts, wait_s=wait_s)
    finally:
        pika_logger.setLevel(level)


def _connect_rabbitmq(pika: Any, url: str, *, attempts: int, wait_s: float) -> None:
    for attempt in range(1, attempts + 1):
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return
        except pika.exceptions.AMQPError as error:
            if attempt == attempts:
                raise BrokerError(
                    f"cannot reach RabbitMQ ({type(error).__name__}): check BROKER_URL and that RabbitMQ is running"
                ) from error
            logger.warning(
                "rabbitmq unreachable at start-up, trying again", extra={"attempt": attempt}
            )
            time.sleep(wait_s)


def broker_for(settings: Settings) -> dramatiq.Broker:
    """Return the broker the settings name: RabbitMQ when BROKER_URL is set, else Redis."""
    if settings.broker_url:
        check_rabbitmq(settings.broker_url.get_secret_value())
        return build_rabbitmq_broker(settings.broker_url.get_secret_value())
    return build_broker(
        settings.redis_url, settings.redis_prefix, tls_insecure=settings.redis_tls_insecure
    )


def stager_for(broker: dramatiq.Broker) -> RedisStager | None:
    """Return a stager that puts jobs on the poller's Redis pipeline, for the Redis broker only."""
    return RedisStager(broker) if isinstance(broker, RedisBroker) else None


class RedisStager:
    """Puts resend jobs on a Redis pipeline, in the layout the Redis broker reads.

    The poller stages a cycle's jobs on the pipeline that also writes their
    records, so that a page of 100 failures costs one round trip, not 100.
    This writes what ``RedisBroker.enqueue`` writes through its dispatch
    script (Dramatiq 2.x, ``brokers/redis/dispatch.lua``): the encoded message
    in the hash ``{namespace}:{queue}.msgs`` under a fresh ``redis_message_id``,
    and that id pushed on the list ``{namespace}:{queue}``, with the delay
    queue and an ``eta`` for a delayed job. Plain commands keep the pipeline
    free of scripts, whose existence redis-py checks in a round trip of its own.
    The broker's ``enqueue`` middleware hooks run as they would.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.broker.declare_queue(QUEUE_NAME)

    def stage(self, pipe: redis.client.Pipeline, job: Job, delay_s: float) -> None:
        broker = self.broker
        message = resend_message(job).copy(options={"redis_message_id": str(uuid.uuid4())})
        delay_ms = int(delay_s * 1000) if delay_s > 0 else None
        queue_name = message.queue_name
        if delay_ms is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(
                queue_name=queue_name, options={"eta": current_millis() + delay_ms}
            )

        broker.emit_before("enqueue", message, delay_ms)
        queue_key = f"{broker.namespace}:{queue_name}"
        redis_message_id = message.options["redis_message_id"]
        pipe.hset(f"{queue_key}.msgs", redis_message_id, message.encode())
        pipe.rpush(queue_key, redis_message_id)
        broker.emit_after("enqueue", message, delay_ms)
