"""Reliability logic against the real Redis: cancels, coverage gaps, budgets, sweeps, the lease."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from retrier.actors import Job
from retrier.lease import PollerLease
from retrier.octopods import OctopodsClient
from retrier.poller import Poller
from retrier.rules import RuleSet
from retrier.simulator import OctopodsSimulator
from retrier.store import Outcome, Store
from retrier.sweeper import sweep
from tests.conftest import API_KEY, flush_sentry
from tests.servers import SentryServer


class Recorder:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(self, job: Job, delay_s: float) -> None:
        self.jobs.append(job)


@pytest.fixture
def simulator() -> Iterator[OctopodsSimulator]:
    sim = OctopodsSimulator(API_KEY)
    yield sim
    sim.close()


@pytest.fixture
def make_poller(store: Store, rules: RuleSet) -> Iterator[Callable[..., tuple[Poller, Recorder]]]:
    clients: list[OctopodsClient] = []

    def make(url: str, **options: Any) -> tuple[Poller, Recorder]:
        recorder = Recorder()
        client = OctopodsClient(url, API_KEY)
        clients.append(client)
        poller = Poller(client, store, lambda: rules, recorder, max_message_age_s=86400, **options)
        return poller, recorder

    yield make
    for client in clients:
        client.close()


def test_late_failure_caught_next_poll(simulator: OctopodsSimulator, make_poller: Any) -> None:
    """A send listed as sent that turns failed later is queued by the next poll."""
    message_id = simulator.send(status="sent")
    poller, recorder = make_poller(simulator.url)
    poller.run_cycle()
    simulator.set_status(message_id, "failed", "try again later")

    poller.run_cycle()

    assert [job.message_id for job in recorder.jobs] == [message_id]


def test_delivered_before_resend_cancels(
    simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    """A queued resend whose message is later listed as delivered is cancelled and recorded so."""
    message_id = simulator.send(status="failed", reason="try again later")
    poller, _ = make_poller(simulator.url)
    poller.run_cycle()
    simulator.set_status(message_id, "delivered")

    report = poller.run_cycle()
    record = store.get_record(message_id)

    assert report.cancelled == 1
    assert record["state"] == "cancelled"
    assert (
        store.begin_attempt(
            message_id,
            token=record["token"],
            root=message_id,
            max_attempts=3,
            inflight_ttl_s=5,
            now=time.time(),
        ).status
        == "done"
    )


def test_full_page_past_watermark_is_gap(
    sentry: SentryServer, simulator: OctopodsSimulator, make_poller: Any, store: Store
) -> None:
    """A full page that does not reach back to the last message seen is a gap: counted,
    alerted, and the poll interval halves down to its floor."""
    simulator.send_random(5)
    poller, _ = make_poller(simulator.url, min_interval_s=20)
    poller.interval_s = poller.current_interval_s = 60
    poller.run_cycle()
    simulator.send_random(150)

    report = poller.run_cycle()
    flush_sentry()

    assert report.gap
    assert poller.current_interval_s == 30
    assert store.counts(hours=1, now=time.time())["coverage_gaps"] == 1
    gaps = [event for event in sentry.error_events() if event["message"].startswith("Coverage gap")]
    assert len(gaps) == 1


def test_overlapping_pages_restore_interval(simulator: OctopodsSimulator, make_poller: Any) -> None:
    simulator.send_random(5)
    poller, _ = make_poller(simulator.url, min_interval_s=20)
    poller.interval_s = poller.current_interval_s = 60
    poller.run_cycle()
    simulator.send_random(150)
    poller.run_cycle()
    poller.run_cycle()
    poller.run_cycle()
    simulator.send_random(10)

    report = poller.run_cycle()

    assert not report.gap
    assert poller.current_interval_s == 60


def test_gap_interval_never_below_floor(simulator: OctopodsSimulator, make_poller: Any) -> None:
    simulator.send_random(5)
    poller, _ = make_poller(simulator.url, min_interval_s=20)
    poller.interval_s = poller.current_interval_s = 60
    poller.run_cycle()
    for _ in range(4):
        simulator.send_random(150)
        poller.run_cycle()
    assert poller.current_interval_s == 20


def test_partial_page_never_gap(simulator: OctopodsSimulator, make_poller: Any) -> None:
    """A page of fewer than 100 items lists everything: no gap is possible."""
    simulator.send_random(5)
    poller, _ = make_poller(simulator.url)
    poller.run_cycle()
    simulator.send_random(50)
    assert not poller.run_cycle().gap


def _start(store: Store, message_id: int, phone: str, limit: int) -> str:
    token = uuid.uuid4().hex
    store.claim([(message_id, token)], now=time.time())
    return store.begin_attempt(
        message_id,
        token=token,
        root=message_id,
        max_attempts=3,
        inflight_ttl_s=5,
        now=time.time(),
        phone_number=phone,
        recipient_limit=limit,
    ).status


def test_recipient_budget_stops_storm(store: Store) -> None:
    """No more than the daily limit of resends go to one number, across messages."""
    statuses = [_start(store, 700 + n, "+15550009999", limit=3) for n in range(5)]
    assert statuses == ["proceed", "proceed", "proceed", "recipient", "recipient"]


def test_recipient_budget_per_number(store: Store) -> None:
    _start(store, 710, "+15550001111", limit=1)
    assert _start(store, 711, "+15550002222", limit=1) == "proceed"


def test_recipient_key_hides_number(store: Store) -> None:
    key = store.recipient_key("+15550001111", now=time.time())
    assert "5550001111" not in key


def test_rate_limit_refund_restores_budget(store: Store) -> None:
    phone = "+15550003333"
    token = uuid.uuid4().hex
    store.claim([(720, token)], now=time.time())
    store.begin_attempt(
        720,
        token=token,
        root=720,
        max_attempts=3,
        inflight_ttl_s=5,
        now=time.time(),
        phone_number=phone,
        recipient_limit=1,
    )
    store.finish_attempt(
        720,
        root=720,
        state="queued",
        counter="",
        fields={},
        now=time.time(),
        refund=True,
        phone_number=phone,
        resent=False,
    )
    assert _start(store, 721, phone, limit=1) == "proceed"


def test_failed_call_restores_budget(store: Store) -> None:
    """A hook call that did not resend (503, timeout) does not use the number's daily budget."""
    phone = "+15550006666"
    _start(store, 730, phone, limit=1)
    store.finish_attempt(
        730,
        root=730,
        state="retrying",
        counter="",
        fields={},
        now=time.time(),
        phone_number=phone,
        resent=False,
    )
    assert _start(store, 731, phone, limit=1) == "proceed"


def test_resent_call_keeps_budget_used(store: Store) -> None:
    phone = "+15550007777"
    _start(store, 740, phone, limit=1)
    store.finish_attempt(
        740, root=740, state="resent", counter="", fields={}, now=time.time(), phone_number=phone
    )
    assert _start(store, 741, phone, limit=1) == "recipient"


def _queued_record(store: Store, message_id: int, *, deadline: float) -> str:
    token = uuid.uuid4().hex
    now = time.time()
    store.claim([(message_id, token)], now=now)
    fields = {
        "rule": "service-unavailable",
        "action": "retry",
        "reason": "try again later",
        "sent_at": 1777025942,  # 2026-04-24T10:19:02Z
    }
    outcome = Outcome(message_id, "queued", fields, ("queued",), None, deadline, "+15550004444")
    store.record([outcome], now=now)
    return token


def test_sweeper_requeues_stalled(store: Store, rules: RuleSet) -> None:
    """A queued message whose job was lost gets a new job under a new token."""
    old_token = _queued_record(store, 801, deadline=time.time() - 1)
    recorder = Recorder()

    requeued = sweep(store, rules.policy_for, recorder, now=time.time())

    job = recorder.jobs[0]
    assert requeued == [801]
    assert job.token != old_token
    assert job.phone_number == "+15550004444"
    assert job.max_attempts == 3
    assert store.get_record(801)["token"] == job.token


def test_sweeper_skips_not_yet_due(store: Store, rules: RuleSet) -> None:
    _queued_record(store, 802, deadline=time.time() + 600)
    recorder = Recorder()
    assert sweep(store, rules.policy_for, recorder, now=time.time()) == []


def test_sweeper_waits_while_paused(store: Store, rules: RuleSet) -> None:
    """Held jobs wait on purpose during a pause: nothing is swept."""
    _queued_record(store, 803, deadline=time.time() - 1)
    store.pause({"rule": "payment", "message_id": 1, "reason": "x", "since": repr(time.time())})
    recorder = Recorder()
    assert sweep(store, rules.policy_for, recorder, now=time.time()) == []


def test_sweeper_leaves_finished(store: Store, rules: RuleSet) -> None:
    token = _queued_record(store, 804, deadline=time.time() - 1)
    store.begin_attempt(
        804, token=token, root=804, max_attempts=3, inflight_ttl_s=5, now=time.time()
    )
    store.finish_attempt(804, root=804, state="resent", counter="", fields={}, now=time.time())
    recorder = Recorder()
    assert sweep(store, rules.policy_for, recorder, now=time.time()) == []


def test_swept_message_old_job_is_stale(store: Store, rules: RuleSet) -> None:
    """After a sweep, the message's old job can no longer call the hook."""
    old_token = _queued_record(store, 805, deadline=time.time() - 1)
    sweep(store, rules.policy_for, Recorder(), now=time.time())
    start = store.begin_attempt(
        805, token=old_token, root=805, max_attempts=3, inflight_ttl_s=5, now=time.time()
    )
    assert start.status == "stale"


def test_lease_one_holder(redis_client: redis.Redis, prefix: str) -> None:
    first = PollerLease(redis_client, prefix, holder="a:1", lease_s=3)
    second = PollerLease(redis_client, prefix, holder="b:2", lease_s=3)
    assert first.try_hold()
    assert not second.try_hold()
    first.release()


def test_lease_released_taken_at_once(redis_client: redis.Redis, prefix: str) -> None:
    first = PollerLease(redis_client, prefix, holder="a:1", lease_s=3)
    second = PollerLease(redis_client, prefix, holder="b:2", lease_s=3)
    first.try_hold()
    first.release()
    assert second.try_hold()
    second.release()


def test_lease_expires_without_renewal(redis_client: redis.Redis, prefix: str) -> None:
    """A holder that stops renewing (killed) loses the lease after one lease period."""
    redis_client.set(f"{prefix}:poller:lease", "dead:1", px=1000)
    standby = PollerLease(redis_client, prefix, holder="b:2", lease_s=3)
    assert not standby.try_hold()
    time.sleep(1.1)
    assert standby.try_hold()
    standby.release()


def test_lease_renewed_by_holder(redis_client: redis.Redis, prefix: str, store: Store) -> None:
    lease = PollerLease(redis_client, prefix, holder="a:1", lease_s=3)
    lease.try_hold()
    time.sleep(3.5)
    assert store.lease_holder() == "a:1"
    lease.release()
