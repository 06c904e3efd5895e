"""The resend actor on a real Dramatiq worker and broker, with a local hook and Sentry."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest

from retrier.actors import Job, Resender, declare_resend_actor, enqueue_resend
from retrier.broker import RedisStager, build_broker
from retrier.hook import HookClient
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.rules import RuleSet
from retrier.simulator import OctopodsSimulator, ResendHook
from retrier.store import Store
from tests.conftest import API_KEY, HOOK_SECRET, REDIS_URL, flush_sentry, wait_for
from tests.servers import HTTPServer, Response, SentryServer

PHONE = "+15550001111"


@dataclass
class Pipeline:
    broker: dramatiq.Broker
    store: Store
    hook: HTTPServer
    worker: dramatiq.Worker

    def job(self, message_id: int, **fields: Any) -> Job:
        token = fields.pop("token", uuid.uuid4().hex)
        claimed = self.store.claim([(message_id, token)], now=time.time())[0]
        values = {
            "message_id": message_id,
            "root": claimed.root,
            "token": token,
            "phone_number": PHONE,
            "sent_at": "2026-04-24T10:19:02Z",
            "failure_reason": "(#131016) Service temporarily unavailable",
            "rule": "service-unavailable",
            "max_attempts": 3,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            **fields,
        }
        return Job(**values)

    def send(self, job: Job, delay_s: float = 0.0) -> None:
        enqueue_resend(self.broker, job, delay_s=delay_s)

    def calls_for(self, message_id: int) -> list[dict[str, Any]]:
        return [
            request.json()
            for request in self.hook.requests
            if request.json()["message_id"] == message_id
        ]


def state_of(store: Store, message_id: int) -> str:
    return store.get_record(message_id).get("state", "")


@pytest.fixture
def pipeline(
    store: Store, prefix: str, http_server: Callable[..., HTTPServer]
) -> Iterator[Pipeline]:
    hook_server = http_server()
    broker = build_broker(REDIS_URL, prefix)
    hook_client = HookClient(hook_server.url, secret=HOOK_SECRET, timeout_s=5)
    declare_resend_actor(broker, Resender(store, hook_client))
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    yield Pipeline(broker, store, hook_server, worker)
    worker.stop(timeout=10_000)
    hook_client.close()
    broker.close()


def test_hook_503_503_200_three_calls(sentry: SentryServer, pipeline: Pipeline) -> None:
    """Two 503s are retried with backoff, the 200 finishes: three calls, no Sentry event."""
    pipeline.hook.script([Response(503), Response(503), Response(200, {"message_id": 9001})])
    pipeline.send(pipeline.job(1001))

    assert wait_for(lambda: state_of(pipeline.store, 1001) == "resent")
    time.sleep(0.3)
    flush_sentry()

    calls = pipeline.calls_for(1001)
    assert [call["attempt"] for call in calls] == [1, 2, 3]
    assert sentry.error_events() == []
    assert pipeline.store.client.get(pipeline.store.keys.resend(9001)) == b"1001"


def test_hook_429_waits_without_using_attempt(sentry: SentryServer, pipeline: Pipeline) -> None:
    """After a hook 429 no hook call happens before Retry-After, and the attempt is not used."""
    pipeline.hook.script([Response(429, {}, {"Retry-After": "2"}), Response(200, {})])
    pipeline.send(pipeline.job(1002, max_attempts=1))

    assert wait_for(lambda: len(pipeline.hook.requests) == 1)
    assert wait_for(lambda: pipeline.store.backoff_until() > 0)
    retry_at = pipeline.store.backoff_until()
    assert wait_for(lambda: state_of(pipeline.store, 1002) == "resent", timeout_s=10)
    flush_sentry()

    first, second = pipeline.hook.requests
    assert second.received_at >= retry_at
    assert retry_at - first.received_at >= 1.5
    assert [call["attempt"] for call in pipeline.calls_for(1002)] == [1, 1]
    assert sentry.error_events() == []


def test_hook_rejection_gives_up_one_event(sentry: SentryServer, pipeline: Pipeline) -> None:
    pipeline.hook.script([Response(400, {"error": "unknown message"})])
    pipeline.send(pipeline.job(1003))

    assert wait_for(lambda: state_of(pipeline.store, 1003) == "gave_up")
    time.sleep(0.3)
    flush_sentry()

    events = sentry.error_events()
    assert len(pipeline.hook.requests) == 1
    assert len(events) == 1
    assert events[0]["fingerprint"] == ["retrier", "gave-up", "service-unavailable"]


def test_exhausted_retries_alert_once(sentry: SentryServer, pipeline: Pipeline) -> None:
    """Retries within policy raise no event; running out raises exactly one."""
    pipeline.hook.script([Response(503)])
    pipeline.send(pipeline.job(1004, max_attempts=3))

    assert wait_for(lambda: state_of(pipeline.store, 1004) == "gave_up")
    time.sleep(0.3)
    flush_sentry()

    assert len(pipeline.hook.requests) == 3
    assert len(sentry.error_events()) == 1


def test_duplicate_job_calls_hook_once(pipeline: Pipeline) -> None:
    """The same job delivered twice (a redelivery after a crash) resends once."""
    pipeline.hook.script([Response(200, {}, delay_s=0.2)])
    job = pipeline.job(1005)
    pipeline.send(job)
    pipeline.send(job)

    assert wait_for(lambda: state_of(pipeline.store, 1005) == "resent")
    time.sleep(0.6)
    assert len(pipeline.hook.requests) == 1


def test_stale_job_never_calls_hook(pipeline: Pipeline) -> None:
    """A job whose claim was replaced by a later cycle's claim is dropped."""
    pipeline.job(1006, token="current")
    stale = Job(
        **{**pipeline.job(1007).__dict__, "message_id": 1006, "token": "replaced", "root": 1006}
    )
    pipeline.send(stale)

    time.sleep(0.8)
    assert pipeline.calls_for(1006) == []


def test_backoff_in_force_delays_hook(pipeline: Pipeline) -> None:
    """A shared backoff set by any process holds the hook call until it passes."""
    until = pipeline.store.defer_until(time.time() + 1.5, source="octopods")
    pipeline.send(pipeline.job(1008))

    assert wait_for(lambda: state_of(pipeline.store, 1008) == "resent")
    assert pipeline.hook.requests[0].received_at >= until


def test_hook_payload_and_headers(pipeline: Pipeline) -> None:
    pipeline.send(pipeline.job(1009, max_attempts=2))

    assert wait_for(lambda: state_of(pipeline.store, 1009) == "resent")
    request = pipeline.hook.requests[0]
    assert request.json() == {
        "type": "whatsapp.message.retry",
        "message_id": 1009,
        "original_message_id": 1009,
        "phone_number": PHONE,
        "sent_at": "2026-04-24T10:19:02Z",
        "failure_reason": "(#131016) Service temporarily unavailable",
        "rule": "service-unavailable",
        "attempt": 1,
        "max_attempts": 2,
    }
    assert request.headers["idempotency-key"] == "1009"


@pytest.fixture
def live(
    store: Store, prefix: str, rules: RuleSet
) -> Iterator[tuple[OctopodsSimulator, ResendHook, Callable[[], Poller], dramatiq.Broker]]:
    simulator = OctopodsSimulator(API_KEY, seed=3)
    hook = ResendHook(simulator, secret=HOOK_SECRET)
    broker = build_broker(REDIS_URL, prefix)
    hook_client = HookClient(hook.url, secret=HOOK_SECRET, timeout_s=5)
    declare_resend_actor(broker, Resender(store, hook_client))
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    clients: list[OctopodsClient] = []

    def make_poller() -> Poller:
        client = OctopodsClient(simulator.url, API_KEY)
        clients.append(client)
        own_store = Store(store.client, prefix)
        return Poller(
            client,
            own_store,
            lambda: rules,
            broker_enqueue(broker),
            max_message_age_s=86400,
            stager=RedisStager(broker),  # jobs ride on the cycle's pipeline, as in production
        )

    yield simulator, hook, make_poller, broker
    worker.stop(timeout=10_000)
    for client in clients:
        client.close()
    hook_client.close()
    broker.close()
    hook.close()
    simulator.close()


def test_pollers_and_worker_resend_each_once(
    sentry: SentryServer, live: tuple[OctopodsSimulator, ResendHook, Callable[[], Poller], Any]
) -> None:
    """Four pollers racing over several cycles, one worker: each retryable failure resent once."""
    simulator, hook, make_poller, _ = live
    retryable = [
        simulator.send(
            status="failed", reason="(#131000) Something went wrong.", phone_number=PHONE
        )
        for _ in range(15)
    ]
    permanent = simulator.send(
        status="failed", reason="Recipient is not a WhatsApp user.", phone_number=PHONE
    )
    simulator.send_random(20)
    pollers = [make_poller() for _ in range(4)]

    def run(poller: Poller) -> None:
        for _ in range(3):
            poller.run_cycle()

    threads = [threading.Thread(target=run, args=(poller,)) for poller in pollers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wait_for(lambda: set(retryable) <= {call["message_id"] for call in hook.calls})
    time.sleep(0.5)
    flush_sentry()

    per_message = Counter(call["message_id"] for call in hook.calls)
    assert all(per_message[message_id] == 1 for message_id in retryable)
    assert permanent not in per_message
    assert max(per_message.values()) == 1
    alerted = [
        event
        for event in sentry.error_events()
        if event["tags"].get("message_id") == str(permanent)
    ]
    assert len(alerted) == 1


def test_signed_requests_verify(
    live: tuple[OctopodsSimulator, ResendHook, Callable[[], Poller], Any],
) -> None:
    simulator, hook, make_poller, _ = live
    failed = simulator.send(
        status="failed", reason="(#131000) Something went wrong", sent_at=datetime.now(UTC)
    )

    make_poller().run_cycle()

    assert wait_for(lambda: any(call["message_id"] == failed for call in hook.calls))
    assert hook.rejected_signatures == 0


def test_stale_message_not_resent_late(pipeline: Pipeline) -> None:
    """A job whose message grew older than its maximum age while waiting is skipped."""
    pipeline.send(pipeline.job(1010, sent_at="2026-01-01T00:00:00Z", max_age_s=3600.0))

    assert wait_for(lambda: state_of(pipeline.store, 1010) == "expired")
    assert pipeline.calls_for(1010) == []
