"""The resend actor: calls the hook for one failed message, retrying by the rule's policy.

The poller enqueues a :class:`Job` per retryable failure. The actor:

1. asks the store whether it may call the hook now (:meth:`Store.begin_attempt`):
   a shared backoff in force or another delivery in flight re-delays the job
   without using an attempt; a duplicate job is dropped;
2. posts the resend request;
3. records the answer: resent; retried later with exponential backoff (408, 5xx,
   timeouts); the shared backoff set and the attempt given back (429); or given
   up and alerted (other 4xx, or attempts used up).

Planned waits are raised as ``dramatiq.Retry`` with a delay, which Dramatiq
re-enqueues and sentry-sdk does not report. Only surprises reach Sentry.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NoReturn

import dramatiq
from dramatiq import Retry
from dramatiq.brokers.redis import RedisBroker

from retrier import alerts
from retrier.backoff import exponential_delay
from retrier.errors import HookRateLimited, HookRejected, HookUnavailable, StoreError
from retrier.flood import AlertBudget
from retrier.hook import HookAnswer, HookClient, ResendRequest
from retrier.store import STALL_GRACE_S, AttemptStart, Store

logger = logging.getLogger(__name__)

QUEUE_NAME = "resend"
ACTOR_NAME = "resend"

#: Wait after a hook 429 that names no retry time.
DEFAULT_RATE_LIMIT_WAIT_S = 60.0

#: Wait before trying again when Redis failed.
STORE_RETRY_DELAY_S = 15.0

#: How often a job held by an account pause checks whether it was lifted.
PAUSE_RECHECK_S = 15.0

#: Added to waits for a shared time so that workers do not all call at once.
_WAKE_MARGIN_S = 0.25


@dataclass(frozen=True)
class Job:
    """One resend, as the poller enqueues it (JSON-serialisable)."""

    message_id: int
    root: int  # the original message of the resend chain
    token: str  # the claim this job belongs to
    phone_number: str | None
    sent_at: str
    failure_reason: str
    rule: str
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    max_age_s: float | None = None  # no resend once the message is older than this

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        """Rebuild a job; raise ValueError naming the field when one is missing or wrong."""
        try:
            return cls(
                message_id=int(data["message_id"]),
                root=int(data["root"]),
                token=str(data["token"]),
                phone_number=data.get("phone_number"),
                sent_at=str(data["sent_at"]),
                failure_reason=str(data.get("failure_reason", "")),
                rule=str(data["rule"]),
                max_attempts=int(data["max_attempts"]),
                backoff_initial_s=float(data["backoff_initial_s"]),
                backoff_max_s=float(data["backoff_max_s"]),
                max_age_s=float(data["max_age_s"]) if data.get("max_age_s") is not None else None,
            )
        except KeyError as error:
            raise ValueError(f"job is missing field {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"job has an invalid field: {error}") from None


def resend_message(job: Job) -> dramatiq.Message[Any]:
    """Return the Dramatiq message that runs the resend actor for ``job``."""
    return dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=(job.to_dict(),),
        kwargs={},
        options={},
    )


def enqueue_resend(broker: dramatiq.Broker, job: Job, *, delay_s: float = 0.0) -> None:
    """Put ``job`` on the resend queue, to run no earlier than ``delay_s`` from now."""
    broker.declare_queue(QUEUE_NAME)
    broker.enqueue(resend_message(job), delay=int(delay_s * 1000) if delay_s > 0 else None)


class Resender:
    """The actor's work, with the store and hook client it needs.

    Args:
        store: the shared Redis state.
        hook: the resend hook client.
        budget: the per-rule hourly alert limit, or None for no limit.
        recipient_limit: resends allowed to one phone number per UTC day, so that
            a hook that keeps failing its sends cannot start a resend storm; 0
            for no limit.
        clock: returns the Unix time; tests may pass their own.
    """

    def __init__(
        self,
        store: Store,
        hook: HookClient,
        *,
        budget: AlertBudget | None = None,
        recipient_limit: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hook = hook
        self.budget = budget
        self.recipient_limit = recipient_limit
        self.clock = clock

    def __call__(self, raw_job: Mapping[str, Any]) -> None:
        try:
            job = Job.from_dict(raw_job)
        except ValueError as error:
            logger.error("dropped invalid job", extra={"error": str(error)})
            return

        try:
            self._run(job)
        except StoreError as error:
            logger.warning(
                "resend delayed: redis unavailable",
                extra={
                    **_ids(job),
                    "attempt": None,
                    "delay_s": STORE_RETRY_DELAY_S,
                    "error": str(error),
                },
            )
            raise Retry(delay=int(STORE_RETRY_DELAY_S * 1000)) from None

    def _run(self, job: Job) -> None:
        now = self.clock()
        if self._too_old(job, now):
            return
        start = self.store.begin_attempt(
            job.message_id,
            token=job.token,
            root=job.root,
            max_attempts=job.max_attempts,
            # The lock outlives the longest call, so a redelivery cannot overlap it.
            inflight_ttl_s=self.hook.timeout_s + 30,
            now=now,
            phone_number=job.phone_number,
            recipient_limit=self.recipient_limit,
        )

        if start.status in ("paused", "backoff", "busy"):
            self._wait(job, start, now)
        if start.status in ("stale", "done"):
            logger.info(
                "dropped duplicate job",
                extra={**_ids(job), "attempt": start.attempt, "delay_s": 0, "state": start.state},
            )
            return
        if start.status == "exhausted":
            self._give_up(
                job, attempt=start.attempt, cause="attempts used up across the resend chain"
            )
            return
        if start.status == "recipient":
            cause = f"the number's daily limit of {self.recipient_limit} resends is used up"
            self._give_up(job, attempt=start.attempt, cause=cause)
            return

        self._call_hook(job, start.attempt)

    def _too_old(self, job: Job, now: float) -> bool:
        """Record and skip a job whose message has grown older than its maximum age.

        Held, replayed, swept and long-delayed jobs all pass here, so a stale
        one-time code or a closed 24-hour window is never resent late.
        """
        if job.max_age_s is None:
            return False
        try:
            sent_at = datetime.fromisoformat(job.sent_at).timestamp()
        except ValueError:
            return False
        if now - sent_at <= job.max_age_s:
            return False
        self.store.finish_attempt(
            job.message_id,
            root=job.root,
            state="expired",
            counter="expired",
            fields={"cause": f"older than {job.max_age_s:g}s when its resend was due"},
            now=now,
        )
        logger.info(
            "resend skipped: message too old",
            extra={**_ids(job), "attempt": None, "delay_s": 0, "age_s": round(now - sent_at)},
        )
        return True

    def _wait(self, job: Job, start: AttemptStart, now: float) -> NoReturn:
        if start.status == "paused":
            wait_s = PAUSE_RECHECK_S
            event = "resend held: account paused"
        else:
            wait_s = max(start.until - now, 0.0) + _WAKE_MARGIN_S
            event = (
                "resend waits for backoff"
                if start.status == "backoff"
                else "resend waits for in-flight call"
            )
        if start.status == "backoff":
            self.store.count({"rate_limit_waits": 1}, now=now)
        logger.info(
            event, extra={**_ids(job), "attempt": start.attempt, "delay_s": round(wait_s, 2)}
        )
        raise Retry(delay=int(wait_s * 1000))

    def _call_hook(self, job: Job, attempt: int) -> None:
        request = ResendRequest(
            message_id=job.message_id,
            original_message_id=job.root,
            phone_number=job.phone_number,
            sent_at=job.sent_at,
            failure_reason=job.failure_reason,
            rule=job.rule,
            attempt=attempt,
            max_attempts=job.max_attempts,
        )
        try:
            answer = self.hook.send(request)
        except HookRateLimited as error:
            self._wait_for_rate_limit(job, attempt, error)
        except HookUnavailable as error:
            self._retry_later(job, attempt, error)
        except HookRejected as error:
            self._give_up(
                job, attempt=attempt, cause=str(error), answer=error.status, called_hook=True
            )
        else:
            self._record_resent(job, attempt, answer)

    def _record_resent(self, job: Job, attempt: int, answer: HookAnswer) -> None:
        now = self.clock()
        fields: dict[str, str | int | float] = {
            _history_field(attempt): _history(
                now, answer.status, "already resent" if answer.already_resent else ""
            ),
        }
        if answer.new_message_id is not None:
            fields["resent_as"] = answer.new_message_id
        self.store.finish_attempt(
            job.message_id, root=job.root, state="resent", counter="resent", fields=fields, now=now
        )
        if answer.new_message_id is not None:
            self.store.link_resend(answer.new_message_id, root=job.root)
        logger.info(
            "message resent",
            extra={
                **_ids(job),
                "attempt": attempt,
                "delay_s": 0,
                "status": answer.status,
                "already_resent": answer.already_resent,
                "resent_as": answer.new_message_id,
            },
        )

    def _wait_for_rate_limit(self, job: Job, attempt: int, error: HookRateLimited) -> None:
        now = self.clock()
        until = error.retry_at or now + DEFAULT_RATE_LIMIT_WAIT_S
        until = self.store.defer_until(until, source="hook")
        self.store.finish_attempt(
            job.message_id,
            root=job.root,
            state="queued",
            counter="rate_limited",
            fields={
                _history_field(attempt): _history(now, 429, "rate limited; attempt not used"),
            },
            now=now,
            refund=True,
            resent=False,
            stall_deadline=until + STALL_GRACE_S,
            phone_number=job.phone_number,
        )
        wait_s = max(until - now, 0.0) + _WAKE_MARGIN_S
        logger.warning(
            "hook rate limited",
            extra={
                **_ids(job),
                "attempt": attempt,
                "delay_s": round(wait_s, 2),
                "retry_at": round(until, 3),
            },
        )
        raise Retry(delay=int(wait_s * 1000))

    def _retry_later(self, job: Job, attempt: int, error: HookUnavailable) -> None:
        if attempt >= job.max_attempts:
            self._give_up(
                job, attempt=attempt, cause=str(error), answer=error.status, called_hook=True
            )
            return

        delay_s = exponential_delay(
            attempt, initial_s=job.backoff_initial_s, max_s=job.backoff_max_s
        )
        now = self.clock()
        self.store.finish_attempt(
            job.message_id,
            root=job.root,
            state="retrying",
            counter="hook_retries",
            fields={
                "next_at": int(now + delay_s),
                _history_field(attempt): _history(now, error.status, str(error)),
            },
            now=now,
            stall_deadline=now + delay_s + STALL_GRACE_S,
            phone_number=job.phone_number,
            resent=False,
        )
        logger.info(
            "resend retry scheduled",
            extra={
                **_ids(job),
                "attempt": attempt,
                "delay_s": round(delay_s, 2),
                "error": str(error),
            },
        )
        raise Retry(delay=int(delay_s * 1000))

    def _give_up(
        self,
        job: Job,
        *,
        attempt: int,
        cause: str,
        answer: int | None = None,
        called_hook: bool = False,
    ) -> None:
        now = self.clock()
        fields: dict[str, str | int | float] = {
            "cause": cause[:200],
            # Kept so that `retrier replay` can queue the message again.
            "job": json.dumps(job.to_dict()),
        }
        if called_hook:
            fields[_history_field(attempt)] = _history(now, answer, cause)
        self.store.finish_attempt(
            job.message_id,
            root=job.root,
            state="gave_up",
            counter="gave_up",
            fields=fields,
            now=now,
            # A failed call gives its slot in the number's daily budget back.
            phone_number=job.phone_number if called_hook else None,
            resent=False,
        )
        logger.warning(
            "resend given up", extra={**_ids(job), "attempt": attempt, "delay_s": 0, "cause": cause}
        )
        if self.budget is not None and not self.budget.allow("gave-up", job.rule, now=now):
            return
        alerts.alert_gave_up(
            message_id=job.message_id,
            rule=job.rule,
            attempt=attempt,
            cause=cause,
            phone_number=job.phone_number,
        )


def _history_field(attempt: int) -> str:
    """Name of the record field that keeps what happened at attempt ``attempt``."""
    return f"a{attempt}"


def _history(now: float, status: int | None, detail: str) -> str:
    """Return one attempt's entry: "<Unix time>|<HTTP status or ->|<detail>"."""
    return f"{int(now)}|{status if status is not None else '-'}|{detail[:120]}"


def _ids(job: Job) -> dict[str, Any]:
    return {"message_id": job.message_id, "rule": job.rule, "root": job.root}


def _retry_when(retries: int, error: BaseException) -> bool:
    # Planned waits (Retry) always run again. Anything else is a surprise: a
    # few more tries, then Dramatiq's dead-letter queue.
    return isinstance(error, Retry) or retries < 3


def declare_resend_actor(
    broker: RedisBroker | dramatiq.Broker, resender: Resender
) -> dramatiq.Actor[Any, Any]:
    """Register the resend actor on ``broker``, running ``resender`` for each job."""

    def resend(job: dict[str, Any]) -> None:
        resender(job)

    # Dramatiq logs each job's arguments, phone numbers included, at DEBUG on
    # the logger "<module>.<actor name>".
    logging.getLogger(f"{__name__}.{ACTOR_NAME}").setLevel(logging.INFO)

    return dramatiq.Actor(
        resend,
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=QUEUE_NAME,
        priority=0,
        options={"retry_when": _retry_when, "min_backoff": 15_000, "max_backoff": 600_000},
    )
