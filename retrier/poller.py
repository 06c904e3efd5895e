"""The poller: lists sent messages, classifies failures, claims them, enqueues or alerts.

One cycle:

1. honour the shared backoff: no request to Octopods before it passes;
2. list the newest 100 sends (a 429 sets the shared backoff);
3. keep the failed ones and classify each failure reason by the rules;
4. claim them in Redis, so that each is acted on once across polls and pollers;
5. per claimed message: skip it if older than its maximum age, alert it if
   permanent, else enqueue a resend job;
6. record every outcome, and log one summary line.

A claim that is never recorded (the process died in between) expires, and a
later cycle claims the message again: nothing claimed is lost.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Protocol

import dramatiq

from retrier import alerts
from retrier.actors import Job, enqueue_resend
from retrier.backoff import exponential_delay
from retrier.errors import (
    OctopodsError,
    OctopodsKeyRejected,
    OctopodsRateLimited,
    StoreError,
)
from retrier.octopods import OctopodsClient, SentMessage
from retrier.rules import Classification, Reason
from retrier.store import Claim, Outcome, Store

logger = logging.getLogger(__name__)

#: Waits after consecutive Octopods 429s that name no retry time.
RATE_LIMIT_INITIAL_S = 30.0
RATE_LIMIT_MAX_S = 900.0

Enqueue = Callable[[Job, float], None]


class Classifier(Protocol):
    """Anything that classifies failure reasons: a RuleSet, or a wrapper of one."""

    def classify(self, reason: Reason) -> Classification: ...


@dataclass
class CycleReport:
    """What one poll cycle saw and did; ``skipped`` counts too-old and malformed items."""

    seen: int = 0
    failed: int = 0
    queued: int = 0
    permanent: int = 0
    gave_up: int = 0
    skipped: int = 0
    duplicates: int = 0
    unclassified: int = 0
    waited_until: float = 0.0  # the shared backoff that stopped this cycle, if any
    error: str = ""
    planned: list[str] = field(default_factory=list)  # dry-run lines

    def fields(self) -> dict[str, int | str]:
        return {
            "seen": self.seen,
            "failed": self.failed,
            "queued": self.queued,
            "permanent": self.permanent,
            "gave_up": self.gave_up,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "unclassified": self.unclassified,
        }


def broker_enqueue(broker: dramatiq.Broker) -> Enqueue:
    """Return an enqueue function that puts jobs on ``broker``'s resend queue."""

    def enqueue(job: Job, delay_s: float) -> None:
        enqueue_resend(broker, job, delay_s=delay_s)

    return enqueue


def normalize_reason(text: str) -> str:
    """Return the form of a failure reason under which unclassified reasons are counted.

    Case and spacing are folded, and long digit runs (ids, phone numbers) become
    ``#``, so that one reason seen with different ids counts as one.
    """
    folded = " ".join(text.casefold().split())
    folded = re.sub(r"\+?\d[\d\s-]{5,}\d", "#", folded)
    return folded[:200] or "(empty)"


class Poller:
    """Runs poll cycles against Octopods; see the module docstring.

    Args:
        client: the Octopods client.
        store: the shared Redis state.
        rules: returns the rules to classify with (called once per cycle).
        enqueue: puts a resend job on the queue with a delay in seconds.
        max_message_age_s: failures older than this are not resent, unless
            their rule sets its own ``max_age``.
        dry_run: classify and report, but claim, enqueue, alert and record nothing.
        api_key: used only to tell one rejected key from the next in alerts.
        clock: returns the Unix time.
    """

    def __init__(
        self,
        client: OctopodsClient,
        store: Store,
        rules: Callable[[], Classifier],
        enqueue: Enqueue,
        *,
        max_message_age_s: float,
        dry_run: bool = False,
        api_key: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.store = store
        self.rules = rules
        self.enqueue = enqueue
        self.max_message_age_s = max_message_age_s
        self.dry_run = dry_run
        self.clock = clock
        self._key_alert = "key-rejected:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
        self._key_rejected_cycles = 0
        self._rate_limited_cycles = 0

    # -- one cycle ------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        """Run one poll cycle and return its report; errors of the API or Redis are reported, not raised."""
        report = CycleReport()
        now = self.clock()

        try:
            until = self.store.backoff_until()
        except StoreError as error:
            report.error = str(error)
            logger.warning("poll skipped: redis unavailable", extra={"error": str(error)})
            return report
        if until > now:
            report.waited_until = until
            logger.info(
                "poll waits for backoff",
                extra={"retry_at": round(until, 3), "delay_s": round(until - now, 2)},
            )
            return report

        messages = self._list(report)
        if messages is None:
            return report

        try:
            self._handle(messages, report, now)
        except StoreError as error:
            # Claims not yet recorded expire and are taken up by a later cycle.
            report.error = str(error)
            logger.warning("poll cycle interrupted: redis unavailable", extra={"error": str(error)})
            return report

        logger.info("poll cycle", extra={**report.fields(), "dry_run": self.dry_run})
        return report

    def _list(self, report: CycleReport) -> list[SentMessage] | None:
        try:
            page = self.client.list_messages()
        except OctopodsRateLimited as error:
            self._on_rate_limited(error, report)
            return None
        except OctopodsKeyRejected as error:
            self._on_key_rejected(error, report)
            return None
        except OctopodsError as error:
            report.error = str(error)
            logger.warning("poll failed", extra={"error": str(error)})
            return None

        self._rate_limited_cycles = 0
        if self._key_rejected_cycles:
            self._key_rejected_cycles = 0
            logger.info("octopods accepts the API key again")
            self._forget_key_alert()
        report.seen = len(page.messages)
        report.skipped += page.invalid
        return page.messages

    def _on_rate_limited(self, error: OctopodsRateLimited, report: CycleReport) -> None:
        now = self.clock()
        self._rate_limited_cycles += 1
        until = error.retry_at or now + exponential_delay(
            self._rate_limited_cycles,
            initial_s=RATE_LIMIT_INITIAL_S,
            max_s=RATE_LIMIT_MAX_S,
            jitter=0,
        )
        report.error = str(error)
        try:
            until = self.store.defer_until(until, source="octopods")
            self.store.count({"rate_limited": 1}, now=now)
        except StoreError as store_error:
            logger.warning(
                "backoff not shared: redis unavailable", extra={"error": str(store_error)}
            )
        report.waited_until = until
        logger.warning(
            "octopods rate limited",
            extra={
                "retry_at": round(until, 3),
                "delay_s": round(until - now, 2),
                "given": error.retry_at is not None,
            },
        )

    def _on_key_rejected(self, error: OctopodsKeyRejected, report: CycleReport) -> None:
        self._key_rejected_cycles += 1
        report.error = str(error)
        logger.error(
            "octopods rejected the API key",
            extra={"detail": str(error), "cycles": self._key_rejected_cycles},
        )
        if self.dry_run:
            return
        try:
            first = self.store.once(self._key_alert)
        except StoreError:
            # Without Redis, alert once per process rather than once per cycle.
            first = self._key_rejected_cycles == 1
        if first:
            alerts.alert_key_rejected(str(error))

    def _forget_key_alert(self) -> None:
        try:
            self.store.forget_once(self._key_alert)
        except StoreError as error:
            logger.warning("alert flag not cleared: redis unavailable", extra={"error": str(error)})

    # -- deciding -------------------------------------------------------

    def _handle(self, messages: list[SentMessage], report: CycleReport, now: float) -> None:
        rules = self.rules()
        failed = [message for message in messages if message.failed]
        report.failed = len(failed)
        if not failed:
            if not self.dry_run:
                self.store.set_last_poll({"at": repr(now), **report.fields()})
            return

        decisions = [
            (message, rules.classify(Reason(message.failure_reason, message.failure_code)))
            for message in failed
        ]
        if self.dry_run:
            self._plan(decisions, report, now)
            return

        claims = self.store.claim(
            [(message.message_id, uuid.uuid4().hex) for message in failed], now=now
        )
        outcomes = []
        for (message, decision), claim in zip(decisions, claims, strict=True):
            if not claim.claimed:
                report.duplicates += 1
                continue
            outcome = self._act(message, decision, claim, report, now)
            if outcome is not None:
                outcomes.append(outcome)

        self.store.record(outcomes, now=now)
        self.store.set_last_poll({"at": repr(now), **report.fields()})

    def _age_limit(self, decision: Classification) -> float:
        return decision.policy.max_age_s or self.max_message_age_s

    def _act(
        self,
        message: SentMessage,
        decision: Classification,
        claim: Claim,
        report: CycleReport,
        now: float,
    ) -> Outcome | None:
        fields: dict[str, str | int | float] = {
            "rule": decision.rule,
            "action": decision.action,
            "reason": message.failure_reason[:300],
            "sent_at": message.sent_at.isoformat(),
        }
        if claim.root != message.message_id:
            fields["root"] = claim.root
        unclassified = None if decision.matched else normalize_reason(message.failure_reason)
        extra_counters: tuple[str, ...] = ("unclassified",) if unclassified else ()
        report.unclassified += 1 if unclassified else 0
        ids = {"message_id": message.message_id, "rule": decision.rule, "action": decision.action}

        age_s = now - message.sent_at.timestamp()
        if age_s > self._age_limit(decision):
            report.skipped += 1
            logger.info(
                "skipped old failure",
                extra={**ids, "age_s": round(age_s), "max_age_s": self._age_limit(decision)},
            )
            return Outcome(
                message.message_id, "expired", fields, ("expired", *extra_counters), unclassified
            )

        if decision.action != "retry":
            report.permanent += 1
            if decision.policy.alert:
                self._alert(message, decision)
            logger.warning(
                "permanent failure", extra={**ids, "reason": message.failure_reason[:200]}
            )
            # NOTE: a pause rule is treated as permanent here: resends are not yet held account-wide.
            return Outcome(
                message.message_id,
                "permanent",
                fields,
                ("permanent", *extra_counters),
                unclassified,
            )

        if claim.attempts_used >= decision.policy.max_attempts:
            report.gave_up += 1
            cause = f"the resend chain of {claim.root} used its {claim.attempts_used} attempts"
            logger.warning(
                "resend given up", extra={**ids, "attempt": claim.attempts_used, "cause": cause}
            )
            alerts.alert_gave_up(
                message_id=message.message_id,
                rule=decision.rule,
                attempt=claim.attempts_used,
                cause=cause,
                phone_number=message.phone_number,
            )
            return Outcome(
                message.message_id,
                "gave_up",
                {**fields, "cause": cause},
                ("gave_up", *extra_counters),
                unclassified,
            )

        return self._enqueue(message, decision, claim, report, fields, extra_counters, unclassified)

    def _enqueue(
        self,
        message: SentMessage,
        decision: Classification,
        claim: Claim,
        report: CycleReport,
        fields: dict[str, str | int | float],
        extra_counters: tuple[str, ...],
        unclassified: str | None,
    ) -> Outcome | None:
        policy = decision.policy
        job = Job(
            message_id=message.message_id,
            root=claim.root,
            token=claim.token,
            phone_number=message.phone_number,
            sent_at=message.sent_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            failure_reason=message.failure_reason,
            rule=decision.rule,
            max_attempts=policy.max_attempts,
            backoff_initial_s=policy.backoff_initial_s,
            backoff_max_s=policy.backoff_max_s,
        )
        ids = {
            "message_id": message.message_id,
            "rule": decision.rule,
            "attempt": claim.attempts_used + 1,
        }
        try:
            self.enqueue(job, policy.delay_s)
        except Exception as error:  # the broker's errors are not one tree: redis, pika, …
            logger.error(
                "enqueue failed; the claim expires and a later cycle retries",
                extra={**ids, "error": str(error)},
            )
            return None

        report.queued += 1
        if policy.alert:
            self._alert(message, decision)
        logger.info("resend queued", extra={**ids, "delay_s": policy.delay_s})
        return Outcome(
            message.message_id, "queued", fields, ("queued", *extra_counters), unclassified
        )

    def _alert(self, message: SentMessage, decision: Classification) -> None:
        alerts.alert_failure(
            message_id=message.message_id,
            rule=decision.rule,
            action=decision.action,
            reason=message.failure_reason,
            phone_number=message.phone_number,
        )

    def _plan(
        self, decisions: list[tuple[SentMessage, Classification]], report: CycleReport, now: float
    ) -> None:
        try:
            handled = self.store.handled([message.message_id for message, _ in decisions])
        except StoreError:
            handled = [False] * len(decisions)
        for (message, decision), done in zip(decisions, handled, strict=True):
            if done:
                verdict = "already handled"
                report.duplicates += 1
            elif now - message.sent_at.timestamp() > self._age_limit(decision):
                verdict = "would skip: older than the maximum age"
                report.skipped += 1
            elif decision.action == "retry":
                verdict = f"would resend after {decision.policy.delay_s:g}s"
                report.queued += 1
            else:
                verdict = "would alert" if decision.policy.alert else "would record as permanent"
                report.permanent += 1
            report.unclassified += 0 if decision.matched else 1
            line = f"{message.message_id}: {decision.rule} ({decision.action}) {verdict}"
            report.planned.append(line)
            logger.info(
                "dry run",
                extra={
                    "message_id": message.message_id,
                    "rule": decision.rule,
                    "action": decision.action,
                    "verdict": verdict,
                },
            )

    # -- the loop -------------------------------------------------------

    def run_forever(self, stop: threading.Event, *, interval_s: float) -> None:
        """Run cycles every ``interval_s`` until ``stop`` is set.

        A cycle in progress finishes first. No cycle starts before a shared
        backoff passes. An unexpected error is logged and sent to Sentry, and
        the loop goes on.
        """
        logger.info("poller started", extra={"interval_s": interval_s, "dry_run": self.dry_run})
        while not stop.is_set():
            started = self.clock()
            try:
                report = self.run_cycle()
            except Exception as error:
                logger.exception("poll cycle failed unexpectedly")
                alerts.capture_unexpected(error)
                report = CycleReport()
            next_at = max(started + interval_s, report.waited_until)
            stop.wait(max(next_at - self.clock(), 0.0))
        logger.info("poller stopped")
