"""Worker throughput: retrier's resend actor against a bare Dramatiq actor, same broker, same hook."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import httpx

from retrier.actors import Job, Resender, declare_resend_actor, enqueue_resend
from retrier.hook import HookClient
from retrier.store import Store

THREADS = 8


def hook_capacity(url: str, requests: int) -> float:
    """Return the POSTs per second the hook answers to ``THREADS`` clients in a tight loop."""
    per_thread = requests // THREADS

    def run() -> None:
        with httpx.Client() as client:
            for _ in range(per_thread):
                client.post(
                    url, content=b'{"bench": true}', headers={"Content-Type": "application/json"}
                )

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_thread * THREADS / (time.perf_counter() - started)


def _drain(
    broker: dramatiq.Broker, done: Callable[[], int], total: int, timeout_s: float = 120
) -> float:
    """Run a worker until ``done()`` reaches ``total``; return the seconds it took."""
    worker = dramatiq.Worker(broker, worker_threads=THREADS, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    deadline = started + timeout_s
    while done() < total and time.perf_counter() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    worker.stop(timeout=30_000)
    if done() < total:
        raise RuntimeError(f"only {done()} of {total} jobs ran within {timeout_s:g}s")
    return elapsed


def bare_dramatiq(make_broker: Callable[[], dramatiq.Broker], hook_url: str, jobs: int) -> float:
    """Return jobs per second of a bare actor that only POSTs to the hook (one client per thread)."""
    broker = make_broker()
    local = threading.local()
    count = [0]
    lock = threading.Lock()

    def bare_post(payload: dict[str, Any]) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=10)
        client.post(hook_url, json=payload).raise_for_status()
        with lock:
            count[0] += 1

    actor = dramatiq.Actor(
        bare_post, broker=broker, actor_name="bare_post", queue_name="bare", priority=0, options={}
    )
    broker.declare_queue("bare")
    broker.flush("bare")
    for index in range(jobs):
        actor.send({"message_id": index, "attempt": 1})
    try:
        return jobs / _drain(broker, lambda: count[0], jobs)
    finally:
        broker.flush("bare")
        broker.close()


class _Counting:
    """Counts the jobs a resender finished, in memory, as the bare actor counts its own."""

    def __init__(self, resender: Resender) -> None:
        self.resender = resender
        self.done = 0
        self._lock = threading.Lock()

    def __call__(self, job: dict[str, Any]) -> None:
        self.resender(job)
        with self._lock:
            self.done += 1


def retrier_actor(
    make_broker: Callable[[], dramatiq.Broker], store: Store, hook_url: str, jobs: int
) -> float:
    """Return resends per second of retrier's actor: claim check, hook POST, record."""
    broker = make_broker()
    hook = HookClient(hook_url, timeout_s=10)
    resender = _Counting(Resender(store, hook))
    declare_resend_actor(broker, resender)  # type: ignore[arg-type]
    broker.flush_all()
    first = 1_000_000 + int(time.time() * 1000) % 1_000_000 * 10
    pairs = [(first + index, uuid.uuid4().hex[:12]) for index in range(jobs)]
    store.claim(pairs, now=time.time())
    for message_id, token in pairs:
        job = Job(
            message_id=message_id,
            root=message_id,
            token=token,
            phone_number=f"+1555{message_id % 10**7:07d}",
            sent_at="2026-04-24T10:19:02Z",
            failure_reason="(#131000) Something went wrong.",
            rule="unknown-error",
            max_attempts=3,
            backoff_initial_s=10,
            backoff_max_s=120,
        )
        enqueue_resend(broker, job)

    try:
        return jobs / _drain(broker, lambda: resender.done, jobs)
    finally:
        hook.close()
        broker.flush_all()
        broker.close()
