"""``retrier replay``: queue given-up resends again once their cause is fixed.

A resend is given up when the hook rejected it or its attempts ran out (a hook
that was down for longer than the rule's backoff, say). Its record keeps the
job, and an index keeps when it was given up. Replay takes the given-up
messages of a time window (and a rule, if named), moves each back to
``queued`` with a fresh attempt budget and a new claim token, and enqueues it.
The move is atomic, so two replays running at once still queue each message
once.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

from retrier.actors import Job
from retrier.batch import Enqueue
from retrier.store import Store

logger = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    """The messages a replay found, queued again, and left, with the reason for each."""

    found: list[tuple[int, str]] = field(default_factory=list)  # (message id, rule)
    queued: list[int] = field(default_factory=list)
    left: list[tuple[int, str]] = field(default_factory=list)  # (message id, why)


def replay(
    store: Store,
    enqueue: Enqueue,
    *,
    since: float,
    until: float,
    rule: str | None,
    dry_run: bool,
    now: float,
) -> ReplayReport:
    """Queue again the messages given up between ``since`` and ``until`` (Unix times).

    Args:
        store: the shared Redis state.
        enqueue: puts a job on the resend queue.
        since: the start of the window.
        until: the end of the window.
        rule: only messages of this rule, or None for all.
        dry_run: report what would be queued, and change nothing.
        now: the current Unix time.
    """
    report = ReplayReport()
    for message_id in store.given_up(since=since, until=until):
        record = store.get_record(message_id)
        record_rule = record.get("rule", "?")
        if rule is not None and record_rule != rule:
            continue
        report.found.append((message_id, record_rule))
        if dry_run:
            continue
        if "job" not in record:
            report.left.append((message_id, "no job was kept with the record"))
            continue

        token = uuid.uuid4().hex
        stored = store.requeue_given_up(message_id, token=token, now=now)
        if stored is None:
            report.left.append((message_id, "no longer given up (another replay took it)"))
            continue
        job = Job.from_dict({**json.loads(stored), "token": token})
        try:
            enqueue(job, 0.0)
        except Exception as error:  # the broker's errors are not one tree: redis, pika, …
            store.restore_given_up(message_id, now=now)
            logger.error(
                "replay enqueue failed",
                extra={"message_id": message_id, "rule": record_rule, "error": str(error)},
            )
            report.left.append((message_id, f"enqueue failed: {error}"))
            continue
        report.queued.append(message_id)
        logger.info(
            "resend replayed",
            extra={"message_id": message_id, "rule": record_rule, "attempt": 1, "delay_s": 0},
        )
    return report
