"""Redis state shared by every retrier process: claims, records, backoff, lineage, counts.

Every method is one round trip (a pipeline or a Lua script), and every redis
error is raised as :class:`~retrier.errors.StoreError`.

A message's record moves through these states::

    claimed ─► queued ─► sending ─► resent
       │                   │  ▲ └─► gave_up      (hook rejected, or attempts used up)
       │                   ▼  │
       │                 retrying
       ├─► permanent     (a permanent rule: alerted, never resent)
       ├─► expired       (older than the maximum age: skipped)
       └─► gave_up       (the resend chain had already used its attempts)

``claimed`` lives only ``claim_ttl_s``: a poller that dies before it enqueues
leaves a claim that expires, and a later cycle claims the message again. Every
other state is kept ``dedup_ttl_s``. A job carries the token of its claim, and
only the job whose token the record holds may call the hook, so a message
enqueued twice after such a crash is still resent once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from retrier import scripts
from retrier.errors import StoreError
from retrier.keys import Keys

logger = logging.getLogger(__name__)

State = Literal[
    "claimed",
    "queued",
    "sending",
    "retrying",
    "resent",
    "gave_up",
    "permanent",
    "expired",
    "cancelled",
]

#: How many distinct unclassified reasons are kept; the rarest go first.
MAX_UNCLASSIFIED = 500

#: Seconds past its expected progress after which a pending message counts as
#: stalled and the sweeper gives it a new job. Generous, because a worker
#: backlog also delays progress, and a sweep of a live job only replaces it.
STALL_GRACE_S = 900

#: Seconds a claim lives before the message can be claimed again; long enough
#: for a poller to enqueue a full page, short enough to retake it soon after a crash.
DEFAULT_CLAIM_TTL_S = 120

#: Seconds the hourly counters are kept: the last day plus a margin.
COUNTS_TTL_S = 2 * 86400


@dataclass(frozen=True)
class Claim:
    """The result of claiming one message id."""

    message_id: int
    token: str
    claimed: bool
    root: int  # the original message of its resend chain (itself if none)
    attempts_used: int  # hook calls the chain has used so far


@dataclass(frozen=True)
class AttemptStart:
    """What :meth:`Store.begin_attempt` decided.

    ``status`` is one of: ``proceed`` (call the hook; ``attempt`` is its number),
    ``paused`` (an account-level failure holds every resend), ``backoff`` (wait
    until ``until``), ``busy`` (another call for the message is in flight; wait
    ``until``), ``stale`` (another job owns the message), ``done`` (already
    finished), ``exhausted`` (no attempts left; ``attempt`` is the number
    used) or ``recipient`` (the number's daily resend budget is used up;
    ``state`` is the resends made to it today). While waiting, ``attempt`` is the number the next call will have.
    """

    status: Literal[
        "proceed", "paused", "backoff", "busy", "stale", "done", "exhausted", "recipient"
    ]
    attempt: int = 0
    until: float = 0.0
    state: str = ""


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Raise any redis error inside the block as StoreError naming ``action``."""
    try:
        yield
    except redis.RedisError as error:
        raise StoreError(f"Redis failed while {action}: {error}") from error


class Store:
    """Redis-backed state; see the module docstring for the record lifecycle."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        dedup_ttl_s: int = 604800,
        claim_ttl_s: int = DEFAULT_CLAIM_TTL_S,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.dedup_ttl_s = dedup_ttl_s
        self.claim_ttl_s = claim_ttl_s
        self._sync = client.register_script(scripts.SYNC_PAGE)
        self._requeue_stalled = client.register_script(scripts.REQUEUE_STALLED)
        self._begin = client.register_script(scripts.BEGIN_ATTEMPT)
        self._finish = client.register_script(scripts.FINISH_ATTEMPT)
        self._defer = client.register_script(scripts.DEFER)
        self._replay = client.register_script(scripts.REPLAY)

    # -- shared backoff -------------------------------------------------

    def backoff_until(self) -> float:
        """Return the Unix time before which no request may be made (0.0 if none)."""
        with translate_errors("reading the backoff"):
            raw = self.client.hget(self.keys.backoff, "until")
        return float(raw) if raw else 0.0

    def defer_until(self, until: float, *, source: str) -> float:
        """Move the shared backoff to ``until`` unless it is already later.

        Returns the backoff in force afterwards. ``source`` (``octopods`` or
        ``hook``) is kept for ``retrier status``.
        """
        with translate_errors("setting the backoff"):
            raw = self._defer(
                keys=[self.keys.backoff], args=[repr(until), source, repr(time.time())]
            )
        return float(raw)

    # -- poller side ----------------------------------------------------

    def claim(self, pairs: Sequence[tuple[int, str]], *, now: float) -> list[Claim]:
        """Claim each ``(message_id, token)`` that has no record yet, atomically.

        A message already claimed or recorded, by this or any other process, comes
        back with ``claimed=False``.
        """
        return self.sync_page(pairs, settled=(), newest=None, now=now).claims

    def sync_page(
        self,
        pairs: Sequence[tuple[int, str]],
        *,
        settled: Sequence[int],
        newest: int | None,
        now: float,
    ) -> PageSync:
        """Take one listed page into account, in one round trip.

        Claims each failed ``(message_id, token)`` as :meth:`claim` does, cancels
        the pending resend of each ``settled`` id (listed as delivered or read),
        and moves the watermark to ``newest`` when that is later.
        """
        args: list[Any] = [
            self.keys.prefix,
            self.claim_ttl_s,
            _time(now),
            "" if newest is None else newest,
            self.keys.counts(int(now // 3600)),
            len(pairs),
        ]
        for message_id, token in pairs:
            args.extend((message_id, token))
        args.extend(settled)
        with translate_errors("claiming messages"):
            rows, cancelled, previous = self._sync(args=args)

        claims = [
            Claim(
                message_id=message_id,
                token=token,
                claimed=bool(claimed),
                root=int(root) if root else message_id,
                attempts_used=int(used),
            )
            for (message_id, token), (claimed, root, used) in zip(pairs, rows, strict=True)
        ]
        watermark = int(_text(previous)) if previous else None
        return PageSync(claims, [int(_text(value)) for value in cancelled], watermark)

    def record(self, outcomes: Sequence[Outcome], *, now: float) -> list[str]:
        """Write the outcome of each claimed message and count it, in one round trip.

        Records become permanent for ``dedup_ttl_s``; a claim that is never recorded
        expires and is taken up again. Returns the unclassified reasons (normalised)
        seen here for the first time.
        """
        if not outcomes:
            return []
        pipe = self.client.pipeline(transaction=False)
        sightings = self.stage_record(pipe, outcomes, now=now)
        with translate_errors("recording outcomes"):
            replies = pipe.execute()
        return [reason for index, reason in sightings if float(replies[index]) == 1.0]

    def stage_record(
        self, pipe: redis.client.Pipeline, outcomes: Sequence[Outcome], *, now: float
    ) -> list[tuple[int, str]]:
        """Queue the writes of :meth:`record` on ``pipe``.

        Returns (reply index, reason) for each unclassified reason counted, whose
        reply is 1 when the reason is seen for the first time.
        """
        if not outcomes:
            return []
        counts = self.keys.counts(int(now // 3600))
        sightings: list[tuple[int, str]] = []
        for outcome in outcomes:
            key = self.keys.message(outcome.message_id)
            fields: dict[Any, Any] = {
                "state": outcome.state,
                "updated_at": _time(now),
                **outcome.fields,
            }
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.dedup_ttl_s)
            if outcome.state == "gave_up":
                pipe.zadd(self.keys.gave_up, {str(outcome.message_id): now})
            if outcome.stall_deadline is not None:
                pipe.zadd(self.keys.pending, {str(outcome.message_id): outcome.stall_deadline})
                if outcome.phone_number:
                    pipe.hset(
                        self.keys.pending_phones, str(outcome.message_id), outcome.phone_number
                    )
            for counter in outcome.counters:
                pipe.hincrby(counts, counter, 1)
            if outcome.unclassified_reason is not None:
                sightings.append((len(pipe), outcome.unclassified_reason))
                pipe.zincrby(self.keys.unclassified, 1, outcome.unclassified_reason)
                sample = str(outcome.fields.get("reason", ""))
                pipe.hsetnx(self.keys.unclassified_samples, outcome.unclassified_reason, sample)
        pipe.expire(counts, COUNTS_TTL_S)
        if sightings:
            pipe.zremrangebyrank(self.keys.unclassified, 0, -MAX_UNCLASSIFIED - 1)
        return sightings

    def stage_count(
        self, pipe: redis.client.Pipeline, counters: Mapping[str, int], *, now: float
    ) -> None:
        """Queue :meth:`count`'s additions on ``pipe``."""
        if not counters:
            return
        key = self.keys.counts(int(now // 3600))
        for name, amount in counters.items():
            pipe.hincrby(key, name, amount)
        pipe.expire(key, COUNTS_TTL_S)

    def count(self, counters: Mapping[str, int], *, now: float) -> None:
        """Add to this hour's outcome counters."""
        if not counters:
            return
        key = self.keys.counts(int(now // 3600))
        pipe = self.client.pipeline(transaction=False)
        for name, amount in counters.items():
            pipe.hincrby(key, name, amount)
        pipe.expire(key, COUNTS_TTL_S)
        with translate_errors("counting outcomes"):
            pipe.execute()

    def handled(self, message_ids: Sequence[int]) -> list[bool]:
        """Return, per id, whether the message already has a record (read-only)."""
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.exists(self.keys.message(message_id))
        with translate_errors("reading records"):
            return [bool(found) for found in pipe.execute()]

    # -- worker side ----------------------------------------------------

    def begin_attempt(
        self,
        message_id: int,
        *,
        token: str,
        root: int,
        max_attempts: int,
        inflight_ttl_s: float,
        now: float,
        phone_number: str | None = None,
        recipient_limit: int = 0,
    ) -> AttemptStart:
        """Decide atomically whether this job may call the hook now, and if so take an attempt.

        See :class:`AttemptStart` for the answers. On ``proceed`` the chain's
        attempt counter is incremented and an in-flight lock is held for
        ``inflight_ttl_s`` so that no duplicate delivery calls the hook at once.
        With a ``recipient_limit``, a call to ``phone_number`` beyond that many
        resends in the UTC day is refused (status ``recipient``).
        """
        args: list[Any] = [
            self.keys.prefix,
            message_id,
            token,
            root,
            max_attempts,
            repr(now),  # exact, to compare with the backoff; the script rounds what it stores
            int(inflight_ttl_s * 1000),
            self.dedup_ttl_s,
            repr(now + inflight_ttl_s + STALL_GRACE_S),
            self.recipient_key(phone_number, now=now) if recipient_limit else "",
            recipient_limit,
        ]
        with translate_errors("starting a hook attempt"):
            raw_status, raw_value, next_attempt = self._begin(args=args)
        status = _text(raw_status)
        value = _text(raw_value)
        if status == "backoff":
            return AttemptStart("backoff", attempt=int(next_attempt), until=float(value))
        if status == "busy":
            return AttemptStart("busy", attempt=int(next_attempt), until=now + int(value) / 1000)
        if status in ("proceed", "exhausted"):
            return AttemptStart(cast(Any, status), attempt=int(value))
        if status == "recipient":
            return AttemptStart("recipient", attempt=int(next_attempt), state=value)
        return AttemptStart(cast(Any, status), attempt=int(next_attempt), state=value)

    def finish_attempt(
        self,
        message_id: int,
        *,
        root: int,
        state: State,
        counter: str,
        fields: Mapping[str, str | int | float],
        now: float,
        refund: bool = False,
        stall_deadline: float | None = None,
        phone_number: str | None = None,
        resent: bool = True,
    ) -> None:
        """Record the end of a hook call and release its in-flight lock.

        ``refund`` gives the attempt back to the chain (a rate-limit wait does
        not use one). A call that did not resend (``resent=False``: refused,
        rate-limited, timed out) gives its resend back to ``phone_number``'s
        daily budget.
        ``counter`` (may be empty) is added to this hour's counts. A message that
        still awaits a resend passes the time by which it must progress,
        ``stall_deadline``, for the sweeper.
        """
        args: list[Any] = [
            self.keys.prefix,
            message_id,
            root,
            "1" if refund else "0",
            self.dedup_ttl_s,
            self.keys.counts(int(now // 3600)),
            counter,
            state,
            _time(now),
            "" if stall_deadline is None else repr(stall_deadline),
            self.recipient_key(phone_number, now=now) if not resent and phone_number else "",
        ]
        for name, value in fields.items():
            args.extend((name, value))
        with translate_errors("finishing a hook attempt"):
            self._finish(args=args)

    def recipient_key(self, phone_number: str | None, *, now: float) -> str:
        """Return the key counting today's resends to ``phone_number`` ("" for no number).

        The number is hashed, so that no phone number appears in a key name.
        """
        if not phone_number:
            return ""
        digits = "".join(char for char in phone_number if char.isdigit())
        digest = hashlib.sha256(digits.encode()).hexdigest()[:16]
        return self.keys.recipient(digest, int(now // 86400))

    def stalled(self, *, now: float, limit: int = 100) -> list[int]:
        """Return ids of messages whose resend should have progressed by ``now``."""
        with translate_errors("reading stalled messages"):
            raw = self.client.zrangebyscore(self.keys.pending, 0, now, start=0, num=limit)
        return [int(_text(value)) for value in raw]

    def pending_phone(self, message_id: int) -> str | None:
        """Return the phone number kept for a message awaiting a resend, or None."""
        with translate_errors("reading a pending message"):
            raw = self.client.hget(self.keys.pending_phones, str(message_id))
        return _text(raw) if raw else None

    def forget_pending(self, message_id: int) -> None:
        """Drop a message from the pending index, for one whose record is gone."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.pending, str(message_id))
        pipe.hdel(self.keys.pending_phones, str(message_id))
        with translate_errors("dropping a pending message"):
            pipe.execute()

    def requeue_stalled(
        self, message_id: int, *, seen_updated_at: str, token: str, now: float
    ) -> bool:
        """Give a stalled message a new claim token, unless it changed since it was read.

        Returns True when the record now carries ``token``: the caller then
        enqueues a job with it, and any older job of the message is stale.
        """
        args: list[Any] = [
            self.keys.prefix,
            message_id,
            seen_updated_at,
            token,
            _time(now),
            repr(now + STALL_GRACE_S),
        ]
        with translate_errors("requeueing a stalled message"):
            return bool(self._requeue_stalled(args=args))

    def link_resend(self, new_message_id: int, *, root: int) -> None:
        """Record that ``new_message_id`` is a resend in the chain of ``root``.

        When the poller later sees the new message fail, its claim finds the
        chain, and the attempt counts against the original's policy.
        """
        with translate_errors("linking a resend"):
            self.client.set(self.keys.resend(new_message_id), root, ex=self.dedup_ttl_s)

    # -- reading --------------------------------------------------------

    def get_record(self, message_id: int) -> dict[str, str]:
        """Return a message's record as text fields ({} when none is kept)."""
        with translate_errors("reading a record"):
            raw = self.client.hgetall(self.keys.message(message_id))
        return {_text(key): _text(value) for key, value in raw.items()}

    def counts(self, *, hours: int, now: float) -> dict[str, int]:
        """Return outcome counters summed over the last ``hours`` UTC hours."""
        current = int(now // 3600)
        pipe = self.client.pipeline(transaction=False)
        for hour in range(current - hours + 1, current + 1):
            pipe.hgetall(self.keys.counts(hour))
        with translate_errors("reading counters"):
            rows = pipe.execute()
        totals: dict[str, int] = {}
        for row in rows:
            for name, value in row.items():
                totals[_text(name)] = totals.get(_text(name), 0) + int(value)
        return totals

    def once(self, name: str, *, ttl_s: int | None = 7 * 86400) -> bool:
        """Return True the first time ``name`` is seen (across processes), else False."""
        with translate_errors("checking an alert flag"):
            return bool(self.client.set(self.keys.once(name), "1", nx=True, ex=ttl_s))

    def forget_once(self, name: str) -> None:
        """Clear a flag set by :meth:`once`, so that the next occurrence alerts again."""
        with translate_errors("clearing an alert flag"):
            self.client.delete(self.keys.once(name))

    def set_last_poll(
        self, fields: Mapping[str, str | int | float], *, poller: str, ttl_s: float
    ) -> None:
        """Store when the last poll ran and what it found, and which poller ran it.

        The poller entry expires after ``ttl_s``, so that ``status`` shows no
        active poller once none has polled for that long.
        """
        pipe = self.client.pipeline(transaction=False)
        self.stage_last_poll(pipe, fields, poller=poller, ttl_s=ttl_s)
        with translate_errors("recording the poll"):
            pipe.execute()

    def stage_last_poll(
        self,
        pipe: redis.client.Pipeline,
        fields: Mapping[str, str | int | float],
        *,
        poller: str,
        ttl_s: float,
    ) -> None:
        """Queue :meth:`set_last_poll`'s writes on ``pipe``."""
        last: dict[Any, Any] = dict(fields)
        pipe.hset(self.keys.last_poll, mapping=last)
        pipe.hset(self.keys.poller, mapping={"id": poller, "at": last.get("at", "")})
        pipe.expire(self.keys.poller, max(int(ttl_s), 1))

    def get_hash(self, key: str) -> dict[str, str]:
        """Return a hash under this store's keys as text ({} when absent)."""
        with translate_errors(f"reading {key}"):
            raw = self.client.hgetall(key)
        return {_text(name): _text(value) for name, value in raw.items()}

    # -- pause ----------------------------------------------------------

    def pause(self, fields: Mapping[str, str | int | float]) -> bool:
        """Hold every resend of the account; return True if this call set the pause.

        ``fields`` (rule, message_id, reason, since) describe the failure that
        caused it; a pause already in force is kept as it is.
        """
        pipe = self.client.pipeline(transaction=True)
        index = self.stage_pause(pipe, fields)
        with translate_errors("pausing resends"):
            return bool(pipe.execute()[index])

    def stage_pause(
        self, pipe: redis.client.Pipeline, fields: Mapping[str, str | int | float]
    ) -> int:
        """Queue :meth:`pause` on ``pipe``; return the index of its reply (1 if it paused).

        Each field is set only if absent, so a pause already in force keeps its
        cause; the reply of the first field tells whether this call paused.
        """
        index = len(pipe)
        for name, value in fields.items():
            pipe.hsetnx(self.keys.pause, name, value)
        return index

    def resume(self) -> dict[str, str]:
        """Lift the pause; return what it held ({} when there was none)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.pause)
        pipe.delete(self.keys.pause)
        with translate_errors("resuming resends"):
            raw, _ = pipe.execute()
        return {_text(name): _text(value) for name, value in raw.items()}

    # -- replay ---------------------------------------------------------

    def given_up(self, *, since: float, until: float) -> list[int]:
        """Return the ids of messages given up between ``since`` and ``until``, oldest first."""
        with translate_errors("reading given-up messages"):
            raw = self.client.zrangebyscore(self.keys.gave_up, since, until)
        return [int(_text(value)) for value in raw]

    def requeue_given_up(self, message_id: int, *, token: str, now: float) -> str | None:
        """Move a given-up message back to ``queued`` under ``token``, once.

        Returns the job stored when it was given up (JSON), or None when the
        message is no longer given up (another replay took it) or has no job.
        The chain's attempt count starts again from zero.
        """
        with translate_errors("replaying a message"):
            job = self._replay(
                args=[self.keys.prefix, message_id, token, _time(now), repr(now + STALL_GRACE_S)]
            )
        return _text(job) if job else None

    def lease_holder(self) -> str | None:
        """Return the id of the poller holding the poller lease, or None."""
        with translate_errors("reading the poller lease"):
            raw = self.client.get(self.keys.lease)
        return _text(raw) if raw is not None else None

    def count_given_up(self) -> int:
        """Return how many given-up messages replay can take."""
        with translate_errors("counting given-up messages"):
            return int(self.client.zcard(self.keys.gave_up))

    def top_unclassified(self, limit: int) -> list[tuple[str, int, str]]:
        """Return the most common unclassified reasons: (normalised reason, count, first text)."""
        with translate_errors("reading unclassified reasons"):
            top = cast(
                list[tuple[bytes, float]],
                self.client.zrevrange(self.keys.unclassified, 0, limit - 1, withscores=True),
            )
            names = [reason for reason, _ in top]
            samples = (
                cast(list[bytes | None], self.client.hmget(self.keys.unclassified_samples, names))
                if names
                else []
            )
        return [
            (_text(reason), int(count), _text(sample) if sample else _text(reason))
            for (reason, count), sample in zip(top, samples, strict=True)
        ]

    def restore_given_up(self, message_id: int, *, now: float) -> None:
        """Put a message back among the given-up ones after a replay failed to enqueue it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self.keys.message(message_id), mapping={"state": "gave_up", "updated_at": _time(now)}
        )
        pipe.zadd(self.keys.gave_up, {str(message_id): now})
        with translate_errors("restoring a given-up message"):
            pipe.execute()


@dataclass(frozen=True)
class Outcome:
    """The poller's decision for one claimed message, written by :meth:`Store.record`.

    ``stall_deadline`` (Unix time) is set for a message queued for a resend:
    the sweeper requeues it if it has not progressed by then, with the phone
    number kept beside the pending index until the resend ends.
    """

    message_id: int
    state: State
    fields: Mapping[str, str | int | float]
    counters: tuple[str, ...] = ()
    unclassified_reason: str | None = None
    stall_deadline: float | None = None
    phone_number: str | None = None  # kept only while the message awaits a resend


@dataclass(frozen=True)
class PageSync:
    """The result of :meth:`Store.sync_page`: the claims, the cancelled resends, the old watermark."""

    claims: list[Claim]
    cancelled: list[int]
    previous_watermark: int | None


def _pairs(fields: Mapping[str, str | int | float]) -> list[Any]:
    args: list[Any] = []
    for name, value in fields.items():
        args.extend((name, value))
    return args


def _time(moment: float) -> str:
    """Return a Unix time as whole seconds, the form records keep (a few bytes a field)."""
    return str(int(moment))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
