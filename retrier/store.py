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

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from retrier.errors import StoreError
from retrier.keys import Keys

logger = logging.getLogger(__name__)

State = Literal[
    "claimed", "queued", "sending", "retrying", "resent", "gave_up", "permanent", "expired"
]

#: States after which the hook is never called again for the message.
FINAL_STATES: frozenset[str] = frozenset({"resent", "gave_up", "permanent", "expired"})

#: Seconds a claim lives before the message can be claimed again; long enough
#: for a poller to enqueue a full page, short enough to retake it soon after a crash.
DEFAULT_CLAIM_TTL_S = 120

#: Seconds the hourly counters are kept: the last day plus a margin.
COUNTS_TTL_S = 2 * 86400

# Claim each message id that has no record yet. ARGV: prefix, claim_ttl_s, now,
# then (message_id, token) pairs. Returns, per pair, {claimed (0/1), root id or
# "", attempts used by the root's chain}.
_CLAIM = """
local prefix, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = prefix .. ':msg:' .. id
  if redis.call('exists', key) == 1 then
    table.insert(out, {0, '', 0})
  else
    local root = redis.call('get', prefix .. ':resend:' .. id) or id
    redis.call('hset', key, 'state', 'claimed', 'token', token, 'root', root,
               'seen_at', now, 'updated_at', now)
    redis.call('expire', key, ttl)
    local used = redis.call('hget', prefix .. ':msg:' .. root, 'attempts') or 0
    table.insert(out, {1, root, tonumber(used)})
  end
end
return out
"""

# Start a hook call. ARGV: prefix, id, token, root, max_attempts, now,
# inflight_ttl_ms, dedup_ttl_s. Returns {status, value}: backoff (until),
# stale, done (state), busy (ms left), exhausted (attempts used), proceed (attempt).
_BEGIN = """
local prefix, id, token, root = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_attempts, now = tonumber(ARGV[5]), ARGV[6]
local inflight_ttl, dedup_ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local not_before = tonumber(redis.call('hget', prefix .. ':backoff', 'until') or '0')
if not_before > tonumber(now) then return {'backoff', tostring(not_before)} end
local key = prefix .. ':msg:' .. id
local state, held = unpack(redis.call('hmget', key, 'state', 'token'))
if state and held ~= token then return {'stale', state} end
if state == 'resent' or state == 'gave_up' or state == 'permanent' or state == 'expired' then
  return {'done', state}
end
local lock = prefix .. ':inflight:' .. id
local left = redis.call('pttl', lock)
if left > 0 then return {'busy', tostring(left)} end
local root_key = prefix .. ':msg:' .. root
local used = tonumber(redis.call('hget', root_key, 'attempts') or '0')
if used >= max_attempts then return {'exhausted', tostring(used)} end
redis.call('hincrby', root_key, 'attempts', 1)
redis.call('expire', root_key, dedup_ttl)
redis.call('set', lock, token, 'PX', inflight_ttl)
if not state then redis.call('hset', key, 'token', token, 'root', root, 'seen_at', now) end
redis.call('hset', key, 'state', 'sending', 'updated_at', now)
redis.call('expire', key, dedup_ttl)
return {'proceed', tostring(used + 1)}
"""

# End a hook call. ARGV: prefix, id, root, refund (1 = the attempt was not used),
# dedup_ttl_s, hour key, counter name, then field/value pairs for the record.
_FINISH = """
local prefix, id, root, refund = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dedup_ttl, counts, counter = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local key = prefix .. ':msg:' .. id
if refund == '1' then redis.call('hincrby', prefix .. ':msg:' .. root, 'attempts', -1) end
if #ARGV > 7 then redis.call('hset', key, unpack(ARGV, 8)) end
redis.call('expire', key, dedup_ttl)
redis.call('del', prefix .. ':inflight:' .. id)
if counter ~= '' then
  redis.call('hincrby', counts, counter, 1)
  redis.call('expire', counts, 172800)
end
return 1
"""

# Move the shared backoff later, never earlier. ARGV: key, until, source, now.
# Returns the backoff in force afterwards.
_DEFER = """
local key, not_before, source, now = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
local current = tonumber(redis.call('hget', key, 'until') or '0')
if not_before > current then
  redis.call('hset', key, 'until', ARGV[1], 'source', source, 'set_at', now)
  redis.call('expireat', key, math.ceil(not_before) + 3600)
  return ARGV[1]
end
return tostring(current)
"""


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
    ``backoff`` (wait until ``until``), ``busy`` (another call for the message is
    in flight; wait ``until``), ``stale`` (another job owns the message),
    ``done`` (already finished) or ``exhausted`` (no attempts left).
    """

    status: Literal["proceed", "backoff", "busy", "stale", "done", "exhausted"]
    attempt: int = 0
    until: float = 0.0
    state: str = ""


@contextmanager
def _translate(action: str) -> Iterator[None]:
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
        self._claim = client.register_script(_CLAIM)
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._defer = client.register_script(_DEFER)

    # -- shared backoff -------------------------------------------------

    def backoff_until(self) -> float:
        """Return the Unix time before which no request may be made (0.0 if none)."""
        with _translate("reading the backoff"):
            raw = self.client.hget(self.keys.backoff, "until")
        return float(raw) if raw else 0.0

    def defer_until(self, until: float, *, source: str) -> float:
        """Move the shared backoff to ``until`` unless it is already later.

        Returns the backoff in force afterwards. ``source`` (``octopods`` or
        ``hook``) is kept for ``retrier status``.
        """
        with _translate("setting the backoff"):
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
        if not pairs:
            return []
        args: list[Any] = [self.keys.prefix, self.claim_ttl_s, repr(now)]
        for message_id, token in pairs:
            args.extend((message_id, token))
        with _translate("claiming messages"):
            rows = self._claim(args=args)
        claims = []
        for (message_id, token), (claimed, root, used) in zip(pairs, rows, strict=True):
            claims.append(
                Claim(
                    message_id=message_id,
                    token=token,
                    claimed=bool(claimed),
                    root=int(root) if root else message_id,
                    attempts_used=int(used),
                )
            )
        return claims

    def record(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Write the outcome of each claimed message and count it, in one round trip.

        Records become permanent for ``dedup_ttl_s``; a claim that is never recorded
        expires and is taken up again.
        """
        if not outcomes:
            return
        counts = self.keys.counts(int(now // 3600))
        pipe = self.client.pipeline(transaction=False)
        for outcome in outcomes:
            key = self.keys.message(outcome.message_id)
            fields: dict[Any, Any] = {
                "state": outcome.state,
                "updated_at": repr(now),
                **outcome.fields,
            }
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.dedup_ttl_s)
            for counter in outcome.counters:
                pipe.hincrby(counts, counter, 1)
            if outcome.unclassified_reason is not None:
                pipe.zincrby(self.keys.unclassified, 1, outcome.unclassified_reason)
        pipe.expire(counts, COUNTS_TTL_S)
        with _translate("recording outcomes"):
            pipe.execute()

    def count(self, counters: Mapping[str, int], *, now: float) -> None:
        """Add to this hour's outcome counters."""
        if not counters:
            return
        key = self.keys.counts(int(now // 3600))
        pipe = self.client.pipeline(transaction=False)
        for name, amount in counters.items():
            pipe.hincrby(key, name, amount)
        pipe.expire(key, COUNTS_TTL_S)
        with _translate("counting outcomes"):
            pipe.execute()

    def handled(self, message_ids: Sequence[int]) -> list[bool]:
        """Return, per id, whether the message already has a record (read-only)."""
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.exists(self.keys.message(message_id))
        with _translate("reading records"):
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
    ) -> AttemptStart:
        """Decide atomically whether this job may call the hook now, and if so take an attempt.

        See :class:`AttemptStart` for the answers. On ``proceed`` the chain's
        attempt counter is incremented and an in-flight lock is held for
        ``inflight_ttl_s`` so that no duplicate delivery calls the hook at once.
        """
        args: list[Any] = [
            self.keys.prefix,
            message_id,
            token,
            root,
            max_attempts,
            repr(now),
            int(inflight_ttl_s * 1000),
            self.dedup_ttl_s,
        ]
        with _translate("starting a hook attempt"):
            status, value = self._begin(args=args)
        status = status.decode() if isinstance(status, bytes) else status
        value = value.decode() if isinstance(value, bytes) else value
        if status == "proceed":
            return AttemptStart("proceed", attempt=int(value))
        if status == "backoff":
            return AttemptStart("backoff", until=float(value))
        if status == "busy":
            return AttemptStart("busy", until=now + int(value) / 1000)
        if status == "exhausted":
            return AttemptStart("exhausted", attempt=int(value))
        return AttemptStart(cast(Any, status), state=value)

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
    ) -> None:
        """Record the end of a hook call and release its in-flight lock.

        ``refund`` gives the attempt back to the chain (a rate-limit wait does not
        use an attempt). ``counter`` (may be empty) is added to this hour's counts.
        """
        args: list[Any] = [
            self.keys.prefix,
            message_id,
            root,
            "1" if refund else "0",
            self.dedup_ttl_s,
            self.keys.counts(int(now // 3600)),
            counter,
            "state",
            state,
            "updated_at",
            repr(now),
        ]
        for name, value in fields.items():
            args.extend((name, value))
        with _translate("finishing a hook attempt"):
            self._finish(args=args)

    def link_resend(self, new_message_id: int, *, root: int) -> None:
        """Record that ``new_message_id`` is a resend in the chain of ``root``.

        When the poller later sees the new message fail, its claim finds the
        chain, and the attempt counts against the original's policy.
        """
        with _translate("linking a resend"):
            self.client.set(self.keys.resend(new_message_id), root, ex=self.dedup_ttl_s)

    # -- reading --------------------------------------------------------

    def get_record(self, message_id: int) -> dict[str, str]:
        """Return a message's record as text fields ({} when none is kept)."""
        with _translate("reading a record"):
            raw = self.client.hgetall(self.keys.message(message_id))
        return {_text(key): _text(value) for key, value in raw.items()}

    def counts(self, *, hours: int, now: float) -> dict[str, int]:
        """Return outcome counters summed over the last ``hours`` UTC hours."""
        current = int(now // 3600)
        pipe = self.client.pipeline(transaction=False)
        for hour in range(current - hours + 1, current + 1):
            pipe.hgetall(self.keys.counts(hour))
        with _translate("reading counters"):
            rows = pipe.execute()
        totals: dict[str, int] = {}
        for row in rows:
            for name, value in row.items():
                totals[_text(name)] = totals.get(_text(name), 0) + int(value)
        return totals

    def once(self, name: str, *, ttl_s: int | None = None) -> bool:
        """Return True the first time ``name`` is seen (across processes), else False."""
        with _translate("checking an alert flag"):
            return bool(self.client.set(self.keys.once(name), "1", nx=True, ex=ttl_s))

    def forget_once(self, name: str) -> None:
        """Clear a flag set by :meth:`once`, so that the next occurrence alerts again."""
        with _translate("clearing an alert flag"):
            self.client.delete(self.keys.once(name))

    def set_last_poll(self, fields: Mapping[str, str | int | float]) -> None:
        """Store when the last poll ran and what it found."""
        with _translate("recording the poll"):
            mapping: dict[Any, Any] = dict(fields)
            self.client.hset(self.keys.last_poll, mapping=mapping)

    def get_last_poll(self) -> dict[str, str]:
        """Return what :meth:`set_last_poll` stored ({} before the first poll)."""
        with _translate("reading the last poll"):
            raw = self.client.hgetall(self.keys.last_poll)
        return {_text(key): _text(value) for key, value in raw.items()}


@dataclass(frozen=True)
class Outcome:
    """What the poller decided for one claimed message, for :meth:`Store.record`."""

    message_id: int
    state: State
    fields: Mapping[str, str | int | float]
    counters: tuple[str, ...] = ()
    unclassified_reason: str | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
