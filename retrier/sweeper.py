"""The sweeper: finds accepted messages whose resend stopped progressing, and requeues them.

Dramatiq can lose a message in one case: a job that asks to be retried
later while Redis is away is acknowledged although its retry was never
enqueued. retrier keeps an index of every message that awaits a resend, with
the time by which it must have progressed (its delay or backoff plus
``STALL_GRACE_S``). The poller sweeps that index every cycle: a message past
its time gets a new claim token and a new job, rebuilt from its record and its
rule's current policy. The token makes any old job of the message stale, so a
sweep never causes a second resend. Sweeps pause while resends are paused or
a shared backoff is in force, since jobs are then waiting on purpose.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from retrier.actors import Job
from retrier.batch import Enqueue
from retrier.rules import Policy
from retrier.store import Store

logger = logging.getLogger(__name__)

#: Messages requeued by one sweep at most; the rest wait for the next cycle.
SWEEP_LIMIT = 100


def sweep(
    store: Store,
    policy_for: Callable[[str], Policy],
    enqueue: Enqueue,
    *,
    now: float,
    max_age_s: float | None = None,
) -> list[int]:
    """Requeue the messages whose resend is overdue; return their ids.

    Raises:
        StoreError: Redis failed; the next cycle sweeps again.
    """
    if store.get_hash(store.keys.pause) or store.backoff_until() > now:
        return []

    requeued = []
    for message_id in store.stalled(now=now, limit=SWEEP_LIMIT):
        record = store.get_record(message_id)
        if not record:
            store.forget_pending(message_id)  # expired with the dedup TTL
            continue
        job = _rebuild(message_id, record, store.pending_phone(message_id), policy_for, max_age_s)
        if job is None:
            store.forget_pending(message_id)
            logger.error(
                "stalled message cannot be rebuilt",
                extra={"message_id": message_id, "state": record.get("state")},
            )
            continue
        if not store.requeue_stalled(
            message_id, seen_updated_at=record.get("updated_at", ""), token=job.token, now=now
        ):
            continue  # it progressed, finished or is in flight: nothing to do

        try:
            enqueue(job, 0.0)
        except Exception as error:  # the broker's errors are not one tree: redis, pika, …
            # The record keeps its new stall time, so a later sweep tries again.
            logger.error(
                "sweeper enqueue failed",
                extra={"message_id": message_id, "rule": job.rule, "error": str(error)},
            )
            continue
        requeued.append(message_id)
        logger.warning(
            "stalled resend requeued",
            extra={
                "message_id": message_id,
                "rule": job.rule,
                "attempt": sum(name[0] == "a" and name[1:].isdigit() for name in record) + 1,
                "delay_s": 0,
                "state": record.get("state"),
            },
        )
    return requeued


def _rebuild(
    message_id: int,
    record: dict[str, str],
    phone_number: str | None,
    policy_for: Callable[[str], Policy],
    max_age_s: float | None,
) -> Job | None:
    if not record or "rule" not in record or "sent_at" not in record:
        return None
    policy = policy_for(record["rule"])
    try:
        sent_at = datetime.fromtimestamp(int(float(record["sent_at"])), UTC)
    except (ValueError, OverflowError):
        return None
    return Job(
        message_id=message_id,
        root=int(record.get("root") or message_id),
        token=uuid.uuid4().hex,
        phone_number=phone_number,
        sent_at=sent_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        failure_reason=record.get("reason", ""),
        rule=record["rule"],
        max_attempts=policy.max_attempts,
        backoff_initial_s=policy.backoff_initial_s,
        backoff_max_s=policy.backoff_max_s,
        max_age_s=policy.max_age_s or max_age_s,
    )
