"""What the poller does with each failed message it has claimed.

The checks run in this order. A failure older than its maximum age is skipped.
A ``permanent`` rule alerts. A ``pause`` rule stops every resend of the account
(with one fatal alert for the first such failure) and queues the message, which
goes out after ``retrier resume``. A resend chain that has used its attempts is
given up. The rest are queued for the resend actor with their rule's policy.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC

from retrier import alerts
from retrier.actors import Job
from retrier.batch import CycleBatch
from retrier.octopods import SentMessage
from retrier.rules import Classification
from retrier.store import STALL_GRACE_S, Claim, Outcome

logger = logging.getLogger(__name__)

#: Characters of a failure reason kept in a message's record.
MAX_REASON_CHARS = 160


@dataclass
class CycleReport:
    """Counts of one poll cycle; ``skipped`` includes too-old and malformed items."""

    seen: int = 0
    failed: int = 0
    queued: int = 0
    permanent: int = 0
    paused: int = 0
    gave_up: int = 0
    skipped: int = 0
    duplicates: int = 0
    unclassified: int = 0
    cancelled: int = 0
    listed: int = 0  # items on the page, valid or not
    gap: bool = False  # the page did not reach back to the newest message seen before
    error: str = ""
    planned: list[str] = field(default_factory=list)  # dry-run lines

    def fields(self) -> dict[str, int | str]:
        return {
            "seen": self.seen,
            "failed": self.failed,
            "queued": self.queued,
            "permanent": self.permanent,
            "paused": self.paused,
            "gave_up": self.gave_up,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "unclassified": self.unclassified,
            "cancelled": self.cancelled,
            "gap": int(self.gap),
        }


def normalize_reason(text: str) -> str:
    """Return the form of a failure reason under which unclassified reasons are counted.

    Case and spacing are folded, and long digit runs (ids, phone numbers) become
    ``#``, so that one reason seen with different ids counts as one.
    """
    folded = " ".join(text.casefold().split())
    folded = re.sub(r"\+?\d[\d\s-]{5,}\d", "#", folded)
    return folded[:200] or "(empty)"


def build_job(
    message: SentMessage, decision: Classification, claim: Claim, *, max_age_s: float | None = None
) -> Job:
    """Return the resend job for a claimed message under its rule's policy.

    ``max_age_s`` is the age past which the resend is skipped when it comes due.
    """
    policy = decision.policy
    return Job(
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
        max_age_s=max_age_s,
    )


class Triage:
    """Decides what each claimed failure needs, onto the cycle's batch; see the module docstring.

    Args:
        max_message_age_s: the age limit of rules that set no ``max_age``.
    """

    def __init__(self, *, max_message_age_s: float) -> None:
        self.max_message_age_s = max_message_age_s

    def age_limit(self, decision: Classification) -> float:
        return decision.policy.max_age_s or self.max_message_age_s

    def act(
        self,
        message: SentMessage,
        decision: Classification,
        claim: Claim,
        report: CycleReport,
        batch: CycleBatch,
    ) -> None:
        """Add to ``batch`` what a claimed failure needs: its record, job, alerts or pause."""
        now = batch.now
        fields: dict[str, str | int | float] = {
            "rule": decision.rule,
            "reason": message.failure_reason[:MAX_REASON_CHARS],
            "sent_at": int(message.sent_at.timestamp()),
        }
        if decision.action != "retry":  # readers take a missing action as retry
            fields["action"] = decision.action
        if message.failure_code is not None:
            fields["code"] = message.failure_code
        if claim.root != message.message_id:
            fields["root"] = claim.root
        unclassified = None if decision.matched else normalize_reason(message.failure_reason)
        counters: tuple[str, ...] = ("unclassified",) if unclassified else ()
        report.unclassified += 1 if unclassified else 0
        ids = {
            "message_id": message.message_id,
            "rule": decision.rule,
            "action": decision.action,
            "attempt": claim.attempts_used + 1,
        }

        age_s = now - message.sent_at.timestamp()
        if age_s > self.age_limit(decision):
            report.skipped += 1
            logger.info(
                "skipped old failure",
                extra={**ids, "age_s": round(age_s), "max_age_s": self.age_limit(decision)},
            )
            batch.record(
                Outcome(message.message_id, "expired", fields, ("expired", *counters), unclassified)
            )
            return

        if decision.action == "permanent":
            report.permanent += 1
            logger.warning(
                "permanent failure", extra={**ids, "reason": message.failure_reason[:200]}
            )
            if decision.policy.alert:
                self._alert(message, decision, batch)
            batch.record(
                Outcome(
                    message.message_id, "permanent", fields, ("permanent", *counters), unclassified
                )
            )
            return

        if decision.action == "pause":
            report.paused += 1
            self._pause(message, decision, batch)

        if claim.attempts_used >= decision.policy.max_attempts:
            self._give_up(message, decision, claim, report, batch, fields, counters, unclassified)
            return

        report.queued += 1
        logger.info("resend queued", extra={**ids, "delay_s": decision.policy.delay_s})
        if decision.action == "retry" and decision.policy.alert:
            self._alert(message, decision, batch)
        stall_deadline = now + decision.policy.delay_s + STALL_GRACE_S
        outcome = Outcome(
            message.message_id,
            "queued",
            fields,
            ("queued", *counters),
            unclassified,
            stall_deadline,
            message.phone_number,
        )
        batch.enqueue(
            build_job(message, decision, claim, max_age_s=self.age_limit(decision)),
            decision.policy.delay_s,
            outcome,
        )

    def _give_up(
        self,
        message: SentMessage,
        decision: Classification,
        claim: Claim,
        report: CycleReport,
        batch: CycleBatch,
        fields: dict[str, str | int | float],
        counters: tuple[str, ...],
        unclassified: str | None,
    ) -> None:
        report.gave_up += 1
        cause = f"the resend chain of {claim.root} used its {claim.attempts_used} attempts"
        logger.warning(
            "resend given up",
            extra={
                "message_id": message.message_id,
                "rule": decision.rule,
                "attempt": claim.attempts_used,
                "delay_s": 0,
                "cause": cause,
            },
        )
        batch.alert(
            "gave-up",
            decision.rule,
            lambda: alerts.alert_gave_up(
                message_id=message.message_id,
                rule=decision.rule,
                attempt=claim.attempts_used,
                cause=cause,
                phone_number=message.phone_number,
            ),
        )
        job = json.dumps(
            build_job(message, decision, claim, max_age_s=self.age_limit(decision)).to_dict()
        )
        batch.record(
            Outcome(
                message.message_id,
                "gave_up",
                {**fields, "cause": cause, "job": job},
                ("gave_up", *counters),
                unclassified,
            )
        )

    def _pause(self, message: SentMessage, decision: Classification, batch: CycleBatch) -> None:
        def announce() -> None:
            logger.critical(
                "resends paused: account-level failure",
                extra={
                    "message_id": message.message_id,
                    "rule": decision.rule,
                    "reason": message.failure_reason[:200],
                    "fix": "retrier resume",
                },
            )
            if decision.policy.alert:
                alerts.alert_paused(
                    rule=decision.rule, message_id=message.message_id, reason=message.failure_reason
                )

        fields: dict[str, str | int | float] = {
            "rule": decision.rule,
            "message_id": message.message_id,
            "reason": message.failure_reason[:MAX_REASON_CHARS],
            "since": repr(batch.now),
        }
        batch.pause_resends(fields, announce)

    def _alert(self, message: SentMessage, decision: Classification, batch: CycleBatch) -> None:
        batch.alert(
            decision.action,
            decision.rule,
            lambda: alerts.alert_failure(
                message_id=message.message_id,
                rule=decision.rule,
                action=decision.action,
                reason=message.failure_reason,
                phone_number=message.phone_number,
            ),
        )

    def plan(
        self, message: SentMessage, decision: Classification, handled: bool, now: float
    ) -> str:
        """Return, for a dry run, what :meth:`act` would do with the message."""
        if handled:
            return "already handled"
        if now - message.sent_at.timestamp() > self.age_limit(decision):
            return "would skip: older than the maximum age"
        if decision.action == "permanent":
            return "would alert" if decision.policy.alert else "would record as permanent"
        if decision.action == "pause":
            return "would pause all resends and hold this one"
        return f"would resend after {decision.policy.delay_s:g}s"
