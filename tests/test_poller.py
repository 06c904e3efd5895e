"""Poller cycles against the Octopods simulator or a scripted server, and the real Redis.

Jobs go to a recording enqueue function here; tests/test_pipeline.py runs the
same flows through the real broker and worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import redis

from retrier.actors import Job
from retrier.octopods import OctopodsClient
from retrier.poller import Poller
from retrier.rules import RuleSet
from retrier.simulator import OctopodsSimulator
from retrier.store import Store
from tests.conftest import API_KEY, flush_sentry
from tests.servers import HTTPServer, Response, SentryServer

PHONE = "+15557654321"


class Recorder:
    """Collects the jobs a poller enqueues."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Job, float]] = []
        self._lock = threading.Lock()

    def __call__(self, job: Job, delay_s: float) -> None:
        with self._lock:
            self.jobs.append((job, delay_s))

    @property
    def message_ids(self) -> list[int]:
        return sorted(job.message_id for job, _ in self.jobs)


@pytest.fixture
def simulator() -> Any:
    sim = OctopodsSimulator(API_KEY)
    yield sim
    sim.close()


@pytest.fixture
def make_poller(
    store: Store, rules: RuleSet
) -> Callable[..., tuple[Poller, Recorder, OctopodsClient]]:
    clients: list[OctopodsClient] = []

    def make(
        url: str, *, store_: Store | None = None, **options: Any
    ) -> tuple[Poller, Recorder, OctopodsClient]:
        recorder = Recorder()
        client = OctopodsClient(url, options.pop("api_key", API_KEY), timeout_s=5)
        clients.append(client)
        poller = Poller(
            client,
            store_ or store,
            lambda: rules,
            recorder,
            max_message_age_s=options.pop("max_message_age_s", 86400),
            api_key=API_KEY,
            **options,
        )
        return poller, recorder, client

    yield make
    for client in clients:
        client.close()


def test_failed_message_seen_twice_queued_once(
    simulator: OctopodsSimulator, make_poller: Any
) -> None:
    failed = simulator.send(status="failed", reason="Service temporarily unavailable")
    simulator.send(status="delivered")
    poller, recorder, _ = make_poller(simulator.url)

    poller.run_cycle()
    second = poller.run_cycle()

    assert recorder.message_ids == [failed]
    assert second.duplicates == 1


def test_four_pollers_racing_queue_each_once(
    simulator: OctopodsSimulator, make_poller: Any, redis_client: redis.Redis, prefix: str
) -> None:
    """Four pollers polling the same page at once queue each failed message once in all."""
    expected = sorted(simulator.send(status="failed", reason="try again later") for _ in range(40))
    pollers = [make_poller(simulator.url, store_=Store(redis_client, prefix)) for _ in range(4)]
    barrier = threading.Barrier(4)

    def run(poller: Poller) -> None:
        barrier.wait()
        poller.run_cycle()

    threads = [threading.Thread(target=run, args=(poller,)) for poller, _, _ in pollers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    queued = sorted(message_id for _, recorder, _ in pollers for message_id in recorder.message_ids)
    assert queued == expected


def test_crash_after_claim_is_taken_up_later(
    simulator: OctopodsSimulator, make_poller: Any, redis_client: redis.Redis, prefix: str
) -> None:
    """A poller that dies between claim and enqueue does not lose the message."""
    failed = simulator.send(status="failed", reason="try again later")
    short_claims = Store(redis_client, prefix, claim_ttl_s=1)
    crashing, _, _ = make_poller(simulator.url, store_=short_claims)

    def die(job: Job, delay_s: float) -> None:
        raise SystemExit("process killed")

    crashing.enqueue = die
    with pytest.raises(SystemExit):
        crashing.run_cycle()

    time.sleep(1.2)
    survivor, recorder, _ = make_poller(simulator.url, store_=short_claims)
    survivor.run_cycle()
    assert recorder.message_ids == [failed]


def test_enqueue_failure_leaves_message_for_later(
    simulator: OctopodsSimulator,
    make_poller: Any,
    redis_client: redis.Redis,
    prefix: str,
    store: Store,
) -> None:
    """A broker error is logged; the claim expires and a later cycle queues the message."""
    failed = simulator.send(status="failed", reason="try again later")
    short_claims = Store(redis_client, prefix, claim_ttl_s=1)
    poller, recorder, _ = make_poller(simulator.url, store_=short_claims)

    def broken(job: Job, delay_s: float) -> None:
        raise ConnectionError("broker down")

    poller.enqueue = broken
    first = poller.run_cycle()
    recorded_error = store.get_hash(store.keys.last_poll)["error"]
    time.sleep(1.2)
    poller.enqueue = recorder
    poller.run_cycle()

    assert first.queued == 0
    assert "could not be enqueued" in first.error
    assert "could not be enqueued" in recorded_error
    assert recorder.message_ids == [failed]


def _retry_forms(now: float) -> dict[str, Response]:
    later = now + 2
    moment = datetime.fromtimestamp(later, UTC)
    return {
        "retry-after-seconds": Response(429, {"error": "slow down"}, {"Retry-After": "2"}),
        "retry-after-http-date": Response(
            429, {}, {"Retry-After": format_datetime(moment + timedelta(seconds=1), usegmt=True)}
        ),
        "body-iso-8601": Response(429, {"retry_at": moment.isoformat().replace("+00:00", "Z")}),
        "body-epoch-seconds": Response(429, {"retry_at": int(later) + 1}),
        "body-epoch-milliseconds": Response(429, {"retry_at": int(later * 1000)}),
        "ratelimit-reset-header": Response(429, {}, {"X-RateLimit-Reset": str(int(later) + 1)}),
    }


@pytest.mark.parametrize("form", list(_retry_forms(0)))
def test_rate_limit_no_request_before_retry_time(
    form: str, http_server: Callable[..., HTTPServer], make_poller: Any, store: Store
) -> None:
    """After a 429, no request reaches Octopods before the retry time it gave."""
    server = http_server()
    server.script([_retry_forms(time.time())[form], Response(200, {"messages": []})])
    poller, _, _ = make_poller(server.url)

    poller.run_cycle()
    retry_at = store.backoff_until()
    deadline = time.time() + 5
    while len(server.requests) < 2 and time.time() < deadline:
        poller.run_cycle()
        time.sleep(0.05)

    assert retry_at > server.requests[0].received_at
    assert len(server.requests) == 2
    assert server.requests[1].received_at >= retry_at


def test_rate_limit_without_time_backs_off(
    http_server: Callable[..., HTTPServer], make_poller: Any, store: Store
) -> None:
    """A 429 that names no retry time still sets a shared backoff."""
    server = http_server()
    server.script([Response(429, {"error": "slow down"})])
    poller, _, _ = make_poller(server.url)

    before = time.time()
    poller.run_cycle()
    poller.run_cycle()

    assert store.backoff_until() >= before + 29
    assert len(server.requests) == 1


def test_deprecated_key_one_sentry_event(
    sentry: SentryServer,
    simulator: OctopodsSimulator,
    make_poller: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected key logs a clear line every cycle and alerts Sentry once."""
    poller, _, _ = make_poller(simulator.url, api_key="rotated-key-0000")

    for _ in range(5):
        poller.run_cycle()
    flush_sentry()

    lines = [
        record
        for record in caplog.records
        if record.getMessage() == "octopods rejected the API key"
    ]
    assert len(lines) == 5
    assert "OCTOPODS_API_KEY" in lines[0].detail  # type: ignore[attr-defined]
    events = sentry.error_events()
    assert len(events) == 1
    assert events[0]["level"] == "fatal"


def test_malformed_items_skipped_rest_queued(
    http_server: Callable[..., HTTPServer], make_poller: Any
) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    good = {
        "message_id": 501,
        "status": "failed",
        "phone_number": PHONE,
        "sent_at": now,
        "failure_reason": "try again later",
    }
    page = {
        "messages": [
            {"message_id": "not-a-number", "status": "failed", "sent_at": now},
            {"message_id": 502, "status": "failed", "sent_at": "yesterday"},
            "not an object",
            good,
            {"message_id": 503, "status": None, "sent_at": now},
        ]
    }
    server = http_server()
    server.script([Response(200, page)])
    poller, recorder, _ = make_poller(server.url)

    report = poller.run_cycle()

    assert recorder.message_ids == [501]
    assert report.skipped == 4


def test_old_failure_not_queued(
    simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    old = simulator.send(
        status="failed", reason="try again later", sent_at=datetime.now(UTC) - timedelta(hours=2)
    )
    poller, recorder, _ = make_poller(simulator.url, max_message_age_s=3600)

    report = poller.run_cycle()

    assert recorder.jobs == []
    assert report.skipped == 1
    assert store.get_record(old)["state"] == "expired"


def test_dry_run_changes_nothing(
    sentry: SentryServer,
    simulator: OctopodsSimulator,
    make_poller: Any,
    redis_client: redis.Redis,
    prefix: str,
) -> None:
    """A dry run claims, enqueues, records and alerts nothing, but reports per message."""
    simulator.send(status="failed", reason="try again later")
    simulator.send(status="failed", reason="Recipient is not a WhatsApp user.", phone_number=PHONE)
    poller, recorder, _ = make_poller(simulator.url, dry_run=True)

    report = poller.run_cycle()
    flush_sentry()

    assert recorder.jobs == []
    assert list(redis_client.scan_iter(match=f"{prefix}:*")) == []
    assert sentry.events == []
    assert len(report.planned) == 2


def test_permanent_failure_one_masked_event(
    sentry: SentryServer, simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    failed = simulator.send(
        status="failed", reason="Recipient is not a WhatsApp user.", phone_number=PHONE
    )
    poller, recorder, _ = make_poller(simulator.url)

    poller.run_cycle()
    poller.run_cycle()
    flush_sentry()

    events = sentry.error_events()
    assert recorder.jobs == []
    assert len(events) == 1
    assert events[0]["tags"]["rule"] == "not-a-whatsapp-user"
    assert events[0]["tags"]["message_id"] == str(failed)
    assert events[0]["fingerprint"] == ["retrier", "permanent", "not-a-whatsapp-user"]
    assert events[0]["extra"]["phone"] == "+1555***4321"
    assert store.get_record(failed)["state"] == "permanent"


def test_unclassified_reason_counted(
    simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    """A reason no rule matches gets the defaults and is counted as unclassified."""
    failed = simulator.send(status="failed", reason="Gateway hiccup 7781234 on node 12")
    poller, recorder, _ = make_poller(simulator.url)

    report = poller.run_cycle()

    assert recorder.message_ids == [failed]
    assert report.unclassified == 1
    assert store.client.zscore(store.keys.unclassified, "gateway hiccup # on node 12") == 1.0


def test_job_carries_rule_policy(simulator: OctopodsSimulator, make_poller: Any) -> None:
    failed = simulator.send(status="failed", reason="try again later", phone_number=PHONE)
    poller, recorder, _ = make_poller(simulator.url)

    poller.run_cycle()

    job, delay_s = recorder.jobs[0]
    assert (job.message_id, job.root) == (failed, failed)
    assert job.rule == "service-unavailable"
    assert job.max_attempts == 3
    assert job.backoff_initial_s == 30
    assert delay_s == 0


def test_resend_failure_counts_as_next_attempt(
    simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    """When a resend fails, its job belongs to the original's chain."""
    original = simulator.send(status="failed", reason="try again later")
    now = time.time()
    store.claim([(original, "t")], now=now)
    store.begin_attempt(
        original, token="t", root=original, max_attempts=3, inflight_ttl_s=5, now=now
    )
    store.finish_attempt(
        original, root=original, state="resent", counter="resent", fields={}, now=now
    )
    resend = simulator.send(status="failed", reason="try again later")
    store.link_resend(resend, root=original)
    poller, recorder, _ = make_poller(simulator.url)

    poller.run_cycle()

    job, _ = recorder.jobs[0]
    assert (job.message_id, job.root) == (resend, original)


def test_resend_chain_out_of_attempts_gives_up(
    sentry: SentryServer, simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    """A resend that fails again after the chain used all its attempts is given up and alerted."""
    original = simulator.send(status="failed", reason="try again later")
    now = time.time()
    store.claim([(original, "t")], now=now)
    for _ in range(3):
        store.begin_attempt(
            original, token="t", root=original, max_attempts=3, inflight_ttl_s=0.001, now=now
        )
        store.finish_attempt(
            original, root=original, state="retrying", counter="", fields={}, now=now
        )
    resend = simulator.send(status="failed", reason="try again later")
    store.link_resend(resend, root=original)
    poller, recorder, _ = make_poller(simulator.url)

    report = poller.run_cycle()
    flush_sentry()

    assert recorder.jobs == []
    assert report.gave_up == 1
    assert store.get_record(resend)["state"] == "gave_up"
    assert store.count_given_up() == 1
    assert len(sentry.error_events()) == 1


def test_octopods_down_cycle_survives(make_poller: Any, caplog: pytest.LogCaptureFixture) -> None:
    poller, _, _ = make_poller("http://127.0.0.1:9")

    report = poller.run_cycle()

    assert "cannot reach Octopods" in report.error
    assert any(record.getMessage() == "poll failed" for record in caplog.records)


def test_redis_down_cycle_survives(simulator: OctopodsSimulator, rules: RuleSet) -> None:
    dead = Store(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), "x")
    client = OctopodsClient(simulator.url, API_KEY)
    poller = Poller(client, dead, lambda: rules, Recorder(), max_message_age_s=60)

    report = poller.run_cycle()
    client.close()

    assert "redis" in report.error.lower()


def test_run_forever_stops_on_event(simulator: OctopodsSimulator, make_poller: Any) -> None:
    poller, _, _ = make_poller(simulator.url)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run_forever, args=(stop,), kwargs={"interval_s": 0.1})
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert simulator.requests >= 2
