"""The writes, enqueues and alerts of one poll cycle, sent to Redis in one round trip.

A cycle decides what to do with every claimed failure first and does it
afterwards, in one pipeline: the outcome records, the resend jobs (staged on
the same pipeline when the broker is the Redis one), the alert-limit counts,
the pause, the counters and the last-poll record. Alerts go out once the
pipeline has answered, each only if its rule is within its hourly limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from retrier.actors import Job
from retrier.flood import AlertBudget
from retrier.store import Outcome, Store, translate_errors

logger = logging.getLogger(__name__)

Enqueue = Callable[[Job, float], None]


class Stager(Protocol):
    """Puts resend jobs on a Redis pipeline instead of sending each on its own."""

    def stage(self, pipe: redis.client.Pipeline, job: Job, delay_s: float) -> None: ...


@dataclass
class _Alert:
    kind: str
    rule: str
    send: Callable[[], None]


@dataclass
class CycleBatch:
    """What one cycle will write and send; see the module docstring."""

    now: float
    outcomes: list[Outcome] = field(default_factory=list)
    jobs: list[tuple[Job, float, Outcome]] = field(default_factory=list)
    alerts: list[_Alert] = field(default_factory=list)
    pause: tuple[dict[str, str | int | float], Callable[[], None]] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    first_sightings: list[str] = field(default_factory=list)  # set by execute
    enqueue_failures: int = 0  # set by execute

    def record(self, outcome: Outcome) -> None:
        """Record ``outcome``, which needs no job."""
        self.outcomes.append(outcome)

    def enqueue(self, job: Job, delay_s: float, outcome: Outcome) -> None:
        """Enqueue ``job`` and record ``outcome``; if the job cannot be enqueued, neither happens."""
        self.jobs.append((job, delay_s, outcome))

    def alert(self, kind: str, rule: str, send: Callable[[], None]) -> None:
        """Call ``send`` after the cycle if ``rule`` is within its hourly limit for ``kind``."""
        self.alerts.append(_Alert(kind, rule, send))

    def pause_resends(
        self, fields: dict[str, str | int | float], on_first: Callable[[], None]
    ) -> None:
        """Pause every resend, unless already paused; call ``on_first`` if this cycle paused them."""
        if self.pause is None:
            self.pause = (fields, on_first)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def execute(
        self,
        store: Store,
        *,
        enqueue: Enqueue,
        stager: Stager | None,
        budget: AlertBudget | None,
        last_poll: dict[str, str | int | float],
        poller_id: str,
        poller_ttl_s: float,
    ) -> list[Outcome]:
        """Send everything in one pipeline, then the alerts; return the outcomes recorded.

        Without a ``stager`` each job is enqueued on its own first, and a job that
        fails to enqueue drops its outcome: its claim then expires and a later
        cycle takes the message up.

        Raises:
            StoreError: Redis failed; nothing after the claims was written, and
                the claims expire.
        """
        outcomes = list(self.outcomes)
        # MULTI/EXEC: the whole cycle is written, or none of it.
        pipe = store.client.pipeline(transaction=True)
        for job, delay_s, outcome in self.jobs:
            if stager is not None:
                stager.stage(pipe, job, delay_s)
            elif not _enqueue_now(enqueue, job, delay_s):
                self.enqueue_failures += 1
                continue
            outcomes.append(outcome)
        if self.enqueue_failures:
            last_poll = {
                **last_poll,
                "queued": int(last_poll.get("queued", 0)) - self.enqueue_failures,
                "error": f"{self.enqueue_failures} job(s) could not be enqueued; a later cycle retries them",
            }

        sightings = store.stage_record(pipe, outcomes, now=self.now)
        budget_replies = [
            budget.stage(pipe, alert.kind, alert.rule, now=self.now) if budget is not None else None
            for alert in self.alerts
        ]
        pause_reply = store.stage_pause(pipe, self.pause[0]) if self.pause is not None else None
        store.stage_count(pipe, self.counters, now=self.now)
        store.stage_last_poll(pipe, last_poll, poller=poller_id, ttl_s=poller_ttl_s)
        with translate_errors("writing the cycle"):
            replies: list[Any] = pipe.execute()

        if self.pause is not None and pause_reply is not None and replies[pause_reply]:
            self.pause[1]()
        for alert, index in zip(self.alerts, budget_replies, strict=True):
            if index is None or budget is None or budget.within(replies[index]):
                alert.send()
            else:
                logger.info(
                    "alert suppressed: hourly limit reached",
                    extra={"kind": alert.kind, "rule": alert.rule},
                )
        self.first_sightings = [
            reason for index, reason in sightings if float(replies[index]) == 1.0
        ]
        return outcomes


def _enqueue_now(enqueue: Enqueue, job: Job, delay_s: float) -> bool:
    try:
        enqueue(job, delay_s)
    except Exception as error:  # the broker's errors are not one tree: redis, pika, …
        logger.error(
            "enqueue failed; the claim expires and a later cycle retries",
            extra={"message_id": job.message_id, "rule": job.rule, "error": str(error)},
        )
        return False
    return True
