"""The poller: lists sent messages, classifies failures, claims them, enqueues or alerts.

One cycle:

1. honour the shared backoff: no request to Octopods before it passes;
2. list the newest 100 sends (a 429 sets the shared backoff);
3. keep the failed ones and classify each failure reason by the rules;
4. claim them in Redis, so that each is acted on once across polls and pollers;
5. per claimed message, act as :mod:`retrier.triage` describes (skip, alert,
   pause, give up or enqueue);
6. record every outcome, alert new unclassified reasons, and log one summary
   line.

A claim that is never recorded (the process died in between) expires, and a
later cycle claims the message again: nothing claimed is lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import dramatiq

from retrier import alerts
from retrier.actors import Job, enqueue_resend
from retrier.backoff import exponential_delay
from retrier.batch import CycleBatch, Enqueue, Stager
from retrier.errors import (
    OctopodsError,
    OctopodsKeyRejected,
    OctopodsRateLimited,
    StoreError,
)
from retrier.flood import AlertBudget
from retrier.lease import PollerLease
from retrier.octopods import MAX_LIMIT, OctopodsClient, SentMessage
from retrier.rules import Classification, Policy, Reason
from retrier.store import Outcome, Store
from retrier.sweeper import sweep
from retrier.triage import CycleReport, Triage, normalize_reason

__all__ = ["Classifier", "CycleReport", "Poller", "broker_enqueue", "normalize_reason"]

logger = logging.getLogger(__name__)

#: Seconds between sweeps for stalled resends; each sweep costs a few round trips.
SWEEP_INTERVAL_S = 60.0

#: Hex characters of a claim token: 48 random bits tell one claim of a message
#: from the next, and keep each record small.
TOKEN_CHARS = 12

#: Waits after consecutive Octopods 429s that name no retry time.
RATE_LIMIT_INITIAL_S = 30.0
RATE_LIMIT_MAX_S = 900.0


class Classifier(Protocol):
    """Anything that classifies failure reasons: a RuleSet, or a wrapper of one."""

    def classify(self, reason: Reason) -> Classification: ...

    def policy_for(self, name: str) -> Policy: ...


def broker_enqueue(broker: dramatiq.Broker) -> Enqueue:
    """Return an enqueue function that puts jobs on ``broker``'s resend queue."""

    def enqueue(job: Job, delay_s: float) -> None:
        enqueue_resend(broker, job, delay_s=delay_s)

    return enqueue


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
        budget: the per-rule hourly alert limit, or None for no limit.
        monitor_slug: the Sentry Crons monitor each cycle checks in to, or None.
        stager: puts jobs on the cycle's Redis pipeline (the Redis broker), or
            None to enqueue each job on its own.
        lease: the lease that makes this poller the only active one, or None to
            poll regardless.
        min_interval_s: the shortest interval the poller falls to while pages
            do not reach back to the last message seen (coverage gaps).
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
        budget: AlertBudget | None = None,
        monitor_slug: str | None = None,
        stager: Stager | None = None,
        lease: PollerLease | None = None,
        min_interval_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.store = store
        self.rules = rules
        self.triage = Triage(max_message_age_s=max_message_age_s)
        self.enqueue = enqueue
        self.stager = stager
        self.dry_run = dry_run
        self.budget = budget
        self.monitor_slug = monitor_slug
        self.lease = lease
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.poller_id = f"{os.environ.get('DYNO') or socket.gethostname()}:{os.getpid()}"
        self.interval_s = 60.0
        self.current_interval_s = self.interval_s
        self._key_alert = "key-rejected:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
        self._key_rejected_cycles = 0
        self._next_sweep_at = 0.0
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
            logger.info(
                "poll waits for backoff",
                extra={"retry_at": round(until, 3), "delay_s": round(until - now, 2)},
            )
            return report

        messages = self._list(report)
        if messages is None:
            self._record_failed_poll(report, now)
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
        report.listed = len(page.messages) + page.invalid
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
        decisions = [
            (message, rules.classify(Reason(message.failure_reason, message.failure_code)))
            for message in failed
        ]
        if self.dry_run:
            self._plan(decisions, report, now)
            return

        ids = [message.message_id for message in messages]
        page = self.store.sync_page(
            [(message.message_id, uuid.uuid4().hex[:TOKEN_CHARS]) for message in failed],
            settled=[
                message.message_id
                for message in messages
                if message.status in ("delivered", "read")
            ],
            newest=max(ids) if ids else None,
            now=now,
        )
        batch = CycleBatch(now)
        self._check_coverage(report, batch, page.previous_watermark, min(ids) if ids else None)
        for message_id in page.cancelled:
            report.cancelled += 1
            logger.info("resend cancelled: listed as delivered", extra={"message_id": message_id})
        for (message, decision), claim in zip(decisions, page.claims, strict=True):
            if claim.claimed:
                self.triage.act(message, decision, claim, report, batch)
            else:
                report.duplicates += 1

        recorded = batch.execute(
            self.store,
            enqueue=self.enqueue,
            stager=self.stager,
            budget=self.budget,
            last_poll={"at": repr(now), "error": "", **report.fields()},
            poller_id=self.poller_id,
            poller_ttl_s=3 * self.interval_s,
        )
        # Jobs the broker refused are not queued: their claims expire.
        report.queued -= batch.enqueue_failures
        if batch.enqueue_failures:
            report.error = f"{batch.enqueue_failures} job(s) could not be enqueued"
        self._alert_new_reasons(batch.first_sightings, recorded)

    def _check_coverage(
        self, report: CycleReport, batch: CycleBatch, watermark: int | None, oldest: int | None
    ) -> None:
        """Detect a full page that does not reach back to the newest message seen before.

        Message ids grow with time, so the sends between the watermark and the
        page's oldest id may have failed unseen. The poll interval halves on
        each gap, down to ``min_interval_s``, and returns to normal once pages
        overlap again.
        """
        full = report.listed >= MAX_LIMIT
        if not full or watermark is None or oldest is None or oldest <= watermark:
            if self.current_interval_s != self.interval_s:
                logger.info(
                    "coverage restored: pages overlap again", extra={"interval_s": self.interval_s}
                )
            self.current_interval_s = self.interval_s
            return

        report.gap = True
        self.current_interval_s = max(self.min_interval_s, self.current_interval_s / 2)
        logger.warning(
            "coverage gap: sends may have been missed",
            extra={
                "after_id": watermark,
                "before_id": oldest,
                "interval_s": self.current_interval_s,
            },
        )
        batch.count("coverage_gaps")
        interval_s = self.current_interval_s
        batch.alert(
            "coverage-gap",
            "listing",
            lambda: alerts.alert_coverage_gap(
                after_id=watermark, before_id=oldest, interval_s=interval_s
            ),
        )

    def _record_failed_poll(self, report: CycleReport, now: float) -> None:
        # So that `status` tells a failing poller from one that never ran.
        if self.dry_run:
            return
        try:
            self.store.set_last_poll(
                {"at": repr(now), "error": report.error[:300], **report.fields()},
                poller=self.poller_id,
                ttl_s=3 * self.interval_s,
            )
        except StoreError as error:
            logger.warning("poll not recorded: redis unavailable", extra={"error": str(error)})

    def _alert_new_reasons(self, reasons: list[str], outcomes: list[Outcome]) -> None:
        for reason in reasons:
            outcome = next(item for item in outcomes if item.unclassified_reason == reason)
            logger.warning(
                "new unclassified reason",
                extra={"message_id": outcome.message_id, "reason": reason},
            )
            alerts.alert_unclassified(
                reason=reason,
                sample=str(outcome.fields.get("reason", "")),
                message_id=outcome.message_id,
            )

    def _plan(
        self, decisions: list[tuple[SentMessage, Classification]], report: CycleReport, now: float
    ) -> None:
        try:
            handled = self.store.handled([message.message_id for message, _ in decisions])
        except StoreError:
            handled = [False] * len(decisions)
        for (message, decision), done in zip(decisions, handled, strict=True):
            verdict = self.triage.plan(message, decision, done, now)
            report.unclassified += 0 if decision.matched or done else 1
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

        With a lease, only the poller holding it polls: the others stand by and
        take over when it expires. A cycle in progress finishes first. No cycle
        starts before a shared backoff passes. After each cycle the sweeper
        requeues stalled resends. An unexpected error is logged and sent to
        Sentry, and the loop goes on. Each cycle checks in to the Sentry Crons
        monitor.
        """
        self.interval_s = self.current_interval_s = interval_s
        logger.info(
            "poller started",
            extra={"interval_s": interval_s, "dry_run": self.dry_run, "poller": self.poller_id},
        )
        try:
            while not stop.is_set():
                if self.lease is not None and not self.lease.held and not self.lease.try_hold():
                    stop.wait(self.lease.retry_s)
                    continue
                started = self.clock()
                report = self._cycle_and_sweep()
                if self.monitor_slug and not self.dry_run:
                    alerts.check_in(
                        slug=self.monitor_slug, ok=not report.error, interval_s=interval_s
                    )
                # A backoff longer than the interval is waited out a cycle at a
                # time, so that the Crons monitor still sees check-ins.
                next_at = started + self.current_interval_s
                stop.wait(max(next_at - self.clock(), 0.0))
        finally:
            if self.lease is not None:
                self.lease.release()
        logger.info("poller stopped")

    def _cycle_and_sweep(self) -> CycleReport:
        try:
            report = self.run_cycle()
            now = self.clock()
            if not self.dry_run and not report.error and now >= self._next_sweep_at:
                self._next_sweep_at = now + SWEEP_INTERVAL_S
                sweep(
                    self.store,
                    self._policy_for,
                    self.enqueue,
                    now=now,
                    max_age_s=self.triage.max_message_age_s,
                )
            self._report_suppressed_alerts()
        except StoreError as error:
            logger.warning("sweep skipped: redis unavailable", extra={"error": str(error)})
            report = CycleReport(error=str(error))
        except Exception as error:
            logger.exception("poll cycle failed unexpectedly")
            alerts.capture_unexpected(error)
            report = CycleReport(error=f"{type(error).__name__}: {error}")
        return report

    def _policy_for(self, name: str) -> Policy:
        return self.rules().policy_for(name)

    def _report_suppressed_alerts(self) -> None:
        if self.budget is None or self.dry_run:
            return
        try:
            self.budget.report_previous_hour(now=self.clock())
        except StoreError as error:
            logger.warning(
                "suppressed alerts not reported: redis unavailable", extra={"error": str(error)}
            )
