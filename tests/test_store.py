"""Store: claims, attempts, the shared backoff and lineage, against the real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from retrier.errors import StoreError
from retrier.store import Outcome, Store


def test_claim_first_caller_wins(store: Store) -> None:
    now = time.time()
    first = store.claim([(101, "a")], now=now)
    second = store.claim([(101, "b")], now=now)
    assert first[0].claimed
    assert not second[0].claimed


def test_claim_racing_threads_claim_once(redis_client: redis.Redis, prefix: str) -> None:
    """Eight threads claiming the same 100 ids: every id is claimed exactly once."""
    ids = list(range(1, 101))
    winners: list[int] = []
    lock = threading.Lock()

    def run(token: str) -> None:
        local = Store(redis_client, prefix)
        claims = local.claim([(message_id, token) for message_id in ids], now=time.time())
        with lock:
            winners.extend(claim.message_id for claim in claims if claim.claimed)

    threads = [threading.Thread(target=run, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(winners) == ids


def test_claim_expires_when_never_recorded(redis_client: redis.Redis, prefix: str) -> None:
    """A process that dies after claiming leaves a claim that a later cycle takes up."""
    store = Store(redis_client, prefix, claim_ttl_s=1)
    store.claim([(7, "dead-process")], now=time.time())
    time.sleep(1.2)
    again = store.claim([(7, "next-cycle")], now=time.time())
    assert again[0].claimed


def test_record_keeps_message_for_dedup_ttl(store: Store, redis_client: redis.Redis) -> None:
    now = time.time()
    store.claim([(8, "t")], now=now)
    store.record([Outcome(8, "queued", {"rule": "r"}, ("queued",))], now=now)
    ttl = redis_client.ttl(store.keys.message(8))
    assert ttl > store.claim_ttl_s


def test_record_counts_outcomes(store: Store) -> None:
    now = time.time()
    store.claim([(9, "t"), (10, "u")], now=now)
    store.record(
        [
            Outcome(9, "queued", {}, ("queued",)),
            Outcome(10, "permanent", {}, ("permanent", "unclassified"), "odd reason"),
        ],
        now=now,
    )
    counts = store.counts(hours=1, now=now)
    assert counts == {"queued": 1, "permanent": 1, "unclassified": 1}


def test_backoff_only_moves_later(store: Store) -> None:
    now = time.time()
    store.defer_until(now + 30, source="octopods")
    store.defer_until(now + 10, source="hook")
    assert store.backoff_until() == pytest.approx(now + 30, abs=0.01)


def test_backoff_none_reads_zero(store: Store) -> None:
    assert store.backoff_until() == 0.0


def test_begin_attempt_counts_attempts(store: Store) -> None:
    now = time.time()
    store.claim([(11, "tok")], now=now)
    first = store.begin_attempt(11, token="tok", root=11, max_attempts=3, inflight_ttl_s=5, now=now)
    store.finish_attempt(11, root=11, state="retrying", counter="", fields={}, now=now)
    second = store.begin_attempt(
        11, token="tok", root=11, max_attempts=3, inflight_ttl_s=5, now=now
    )
    assert (first.status, first.attempt) == ("proceed", 1)
    assert (second.status, second.attempt) == ("proceed", 2)


def test_begin_attempt_refuses_other_token(store: Store) -> None:
    """A job whose claim was replaced (the poller crashed and reclaimed) is stale."""
    now = time.time()
    store.claim([(12, "current")], now=now)
    start = store.begin_attempt(12, token="old", root=12, max_attempts=3, inflight_ttl_s=5, now=now)
    assert start.status == "stale"


def test_begin_attempt_busy_while_in_flight(store: Store) -> None:
    now = time.time()
    store.claim([(13, "tok")], now=now)
    store.begin_attempt(13, token="tok", root=13, max_attempts=3, inflight_ttl_s=5, now=now)
    again = store.begin_attempt(13, token="tok", root=13, max_attempts=3, inflight_ttl_s=5, now=now)
    assert again.status == "busy"


def test_begin_attempt_done_after_resent(store: Store) -> None:
    now = time.time()
    store.claim([(14, "tok")], now=now)
    store.begin_attempt(14, token="tok", root=14, max_attempts=3, inflight_ttl_s=5, now=now)
    store.finish_attempt(14, root=14, state="resent", counter="resent", fields={}, now=now)
    again = store.begin_attempt(14, token="tok", root=14, max_attempts=3, inflight_ttl_s=5, now=now)
    assert (again.status, again.state) == ("done", "resent")


def test_begin_attempt_waits_for_backoff(store: Store) -> None:
    now = time.time()
    store.claim([(15, "tok")], now=now)
    store.defer_until(now + 20, source="hook")
    start = store.begin_attempt(15, token="tok", root=15, max_attempts=3, inflight_ttl_s=5, now=now)
    assert start.status == "backoff"
    assert start.until == pytest.approx(now + 20, abs=0.01)


def test_refund_gives_attempt_back(store: Store) -> None:
    """A rate-limit wait does not use up an attempt."""
    now = time.time()
    store.claim([(16, "tok")], now=now)
    store.begin_attempt(16, token="tok", root=16, max_attempts=1, inflight_ttl_s=5, now=now)
    store.finish_attempt(
        16, root=16, state="queued", counter="rate_limited", fields={}, now=now, refund=True
    )
    again = store.begin_attempt(16, token="tok", root=16, max_attempts=1, inflight_ttl_s=5, now=now)
    assert (again.status, again.attempt) == ("proceed", 1)


def test_resend_counts_against_original(store: Store) -> None:
    """A failed resend claims with its original as root and the chain's attempts used."""
    now = time.time()
    store.claim([(20, "tok")], now=now)
    store.begin_attempt(20, token="tok", root=20, max_attempts=3, inflight_ttl_s=5, now=now)
    store.finish_attempt(20, root=20, state="resent", counter="resent", fields={}, now=now)
    store.link_resend(21, root=20)
    claim = store.claim([(21, "tok2")], now=now)[0]
    assert (claim.root, claim.attempts_used) == (20, 1)


def test_once_true_only_first_time(store: Store) -> None:
    assert store.once("flag")
    assert not store.once("flag")


def test_redis_down_raises_store_error(prefix: str) -> None:
    """Every Redis failure reaches callers as StoreError, which names the operation."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    store = Store(dead, prefix)
    with pytest.raises(StoreError, match="reading the backoff"):
        store.backoff_until()
