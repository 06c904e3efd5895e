"""The job queue on RabbitMQ (BROKER_URL=amqp://…), against the local RabbitMQ.

Claims, records and the backoff stay in Redis; only the queue moves. Each test
empties the resend queues first, because RabbitMQ queues have no prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest

from retrier.actors import QUEUE_NAME, Job, Resender, declare_resend_actor, enqueue_resend
from retrier.broker import build_rabbitmq_broker, stager_for
from retrier.hook import HookClient
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.rules import RuleSet
from retrier.simulator import OctopodsSimulator
from retrier.store import Store
from tests.conftest import (
    API_KEY,
    HOOK_SECRET,
    REDIS_URL,
    capture_process_output,
    flush_sentry,
    wait_for,
)
from tests.servers import HTTPServer, Response, SentryServer

RABBITMQ_URL = os.environ.get("RETRIER_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def job_for(store: Store, message_id: int, **fields: object) -> Job:
    token = uuid.uuid4().hex[:12]
    store.claim([(message_id, token)], now=time.time())
    values: dict[str, object] = {
        "message_id": message_id,
        "root": message_id,
        "token": token,
        "phone_number": "+15550005555",
        "sent_at": "2026-04-24T10:19:02Z",
        "failure_reason": "(#131000) Something went wrong",
        "rule": "unknown-error",
        "max_attempts": 3,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 0.5,
        **fields,
    }
    return Job(**values)  # type: ignore[arg-type]


def empty_queues(broker: dramatiq.Broker) -> None:
    broker.declare_queue(QUEUE_NAME)
    broker.flush_all()


@pytest.fixture
def rabbit() -> Iterator[dramatiq.Broker]:
    """A RabbitMQ broker with empty resend queues, closed after the test."""
    broker = build_rabbitmq_broker(RABBITMQ_URL)
    empty_queues(broker)
    yield broker
    empty_queues(broker)
    broker.close()


@pytest.fixture
def worker_on(
    store: Store, http_server: Callable[..., HTTPServer]
) -> Iterator[Callable[[dramatiq.Broker], HTTPServer]]:
    started: list[tuple[dramatiq.Worker, HookClient]] = []

    def start(broker: dramatiq.Broker) -> HTTPServer:
        hook = http_server()
        client = HookClient(hook.url, secret=HOOK_SECRET, timeout_s=5)
        declare_resend_actor(broker, Resender(store, client))
        worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
        worker.start()
        started.append((worker, client))
        return hook

    yield start
    for worker, client in started:
        worker.stop(timeout=10_000)
        client.close()


def test_rabbitmq_retries_then_resends(
    sentry: SentryServer,
    rabbit: dramatiq.Broker,
    store: Store,
    worker_on: Callable[[dramatiq.Broker], HTTPServer],
) -> None:
    """503, 503, 200 through RabbitMQ's delay queue: three calls, resent, no Sentry event."""
    hook = worker_on(rabbit)
    hook.script([Response(503), Response(503), Response(200, {})])

    enqueue_resend(rabbit, job_for(store, 5001))

    assert wait_for(lambda: store.get_record(5001).get("state") == "resent", timeout_s=20)
    flush_sentry()
    assert [request.json()["attempt"] for request in hook.requests] == [1, 2, 3]
    assert sentry.error_events() == []


def test_rabbitmq_pollers_resend_each_once(
    rabbit: dramatiq.Broker,
    store: Store,
    prefix: str,
    rules: RuleSet,
    worker_on: Callable[[dramatiq.Broker], HTTPServer],
) -> None:
    """Two pollers and a worker on RabbitMQ: each retryable failure is resent once."""
    hook = worker_on(rabbit)
    simulator = OctopodsSimulator(API_KEY)
    expected = [
        simulator.send(status="failed", reason="(#131000) Something went wrong") for _ in range(12)
    ]
    clients = [OctopodsClient(simulator.url, API_KEY) for _ in range(2)]
    pollers = [
        Poller(
            client,
            Store(store.client, prefix),
            lambda: rules,
            broker_enqueue(rabbit),
            max_message_age_s=86400,
            stager=stager_for(rabbit),
        )
        for client in clients
    ]
    try:
        for poller in pollers * 2:
            poller.run_cycle()
        assert wait_for(lambda: len(hook.requests) >= len(expected), timeout_s=20)
        time.sleep(0.5)
    finally:
        for client in clients:
            client.close()
        simulator.close()

    per_message = Counter(request.json()["message_id"] for request in hook.requests)
    assert sorted(per_message) == sorted(expected)
    assert set(per_message.values()) == {1}


def test_rabbitmq_stager_is_none(rabbit: dramatiq.Broker) -> None:
    """Jobs for RabbitMQ are published one by one; only Redis jobs ride on the pipeline."""
    assert stager_for(rabbit) is None


def test_rabbitmq_worker_process_sigterm(
    rabbit: dramatiq.Broker,
    store: Store,
    prefix: str,
    http_server: Callable[..., HTTPServer],
    tmp_path: Path,
) -> None:
    """`retrier worker` on RabbitMQ: SIGTERM mid-call finishes the call, and the job
    it had prefetched goes back to the queue for the next worker."""
    hook = http_server()
    hook.script([Response(200, {}, delay_s=2.0), Response(200, {})])
    for message_id in (5101, 5102):
        enqueue_resend(rabbit, job_for(store, message_id))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": REDIS_URL,
        "BROKER_URL": RABBITMQ_URL,
        "RETRIER_REDIS_PREFIX": prefix,
        "RESEND_HOOK_URL": hook.url,
        "RESEND_HOOK_SECRET": HOOK_SECRET,
    }
    command = [sys.executable, "-m", "retrier.cli", "worker", "--threads", "1"]

    first = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert wait_for(lambda: len(hook.requests) == 1, timeout_s=20)
    os.killpg(first.pid, signal.SIGTERM)
    output, _ = first.communicate(timeout=30)
    capture_process_output("worker rabbitmq", output)
    finished = [request.json()["message_id"] for request in hook.requests]

    second = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: len(hook.requests) == 2, timeout_s=20)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        output, _ = second.communicate(timeout=30)
        capture_process_output("worker rabbitmq", output)

    assert first.returncode == 0
    assert len(finished) == 1
    assert sorted(request.json()["message_id"] for request in hook.requests) == [5101, 5102]
