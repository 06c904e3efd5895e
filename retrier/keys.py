"""Names of every Redis key retrier writes, all under the configured prefix.

{prefix}:backoff             hash: until (Unix s), source, set_at; the shared
                             "no request before" time
{prefix}:msg:{message_id}    hash: one message's record (see store.Record)
{prefix}:inflight:{id}       string: token of the hook call in progress
{prefix}:resend:{new_id}     string: the original message a resend belongs to
{prefix}:counts:{hour}       hash: outcome counters for one UTC hour
{prefix}:unclassified        sorted set: normalised reasons no rule matched, by count
{prefix}:unclassified:sample hash: normalised reason -> its first original text
{prefix}:once:{name}         string: an alert already sent (deprecated key, …)
{prefix}:poll:last           hash: when the last poll ran and what it found
{prefix}:poller              hash: the poller that ran it, while it keeps polling
{prefix}:poller:lease        string: the id of the one poller allowed to poll
{prefix}:gaveup              sorted set: ids of messages given up, by time
{prefix}:pending             sorted set: ids of messages awaiting a resend, by the
                             time they count as stalled (the sweeper reads it)
{prefix}:pending:phone       hash: id -> phone number, only while the message is pending
{prefix}:watermark           string: the newest message id any poll has seen
{prefix}:recipient:{h}:{day} string: resends to one phone number (hashed) that UTC day
{prefix}:pause               hash: the account-level failure holding every resend
{prefix}:rules               hash: the rules version the poller uses, and a failed reload
{prefix}:alerts:{hour}       hash: alerts sent and suppressed per rule in one UTC hour
{prefix}:dramatiq:*          the Dramatiq broker's queues
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Builds key names under ``prefix``."""

    prefix: str

    @property
    def backoff(self) -> str:
        return f"{self.prefix}:backoff"

    @property
    def unclassified(self) -> str:
        return f"{self.prefix}:unclassified"

    @property
    def unclassified_samples(self) -> str:
        return f"{self.prefix}:unclassified:sample"

    @property
    def gave_up(self) -> str:
        return f"{self.prefix}:gaveup"

    @property
    def pause(self) -> str:
        return f"{self.prefix}:pause"

    @property
    def rules(self) -> str:
        return f"{self.prefix}:rules"

    @property
    def poller(self) -> str:
        return f"{self.prefix}:poller"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def pending_phones(self) -> str:
        return f"{self.prefix}:pending:phone"

    @property
    def watermark(self) -> str:
        return f"{self.prefix}:watermark"

    @property
    def lease(self) -> str:
        return f"{self.prefix}:poller:lease"

    def recipient(self, phone_hash: str, day: int) -> str:
        """Resend counter of one number on one UTC day; ``day`` is Unix time // 86400."""
        return f"{self.prefix}:recipient:{phone_hash}:{day}"

    def alerts(self, hour: int) -> str:
        """Alert budget hash of one UTC hour; ``hour`` is Unix time // 3600."""
        return f"{self.prefix}:alerts:{hour}"

    @property
    def last_poll(self) -> str:
        return f"{self.prefix}:poll:last"

    @property
    def broker_namespace(self) -> str:
        return f"{self.prefix}:dramatiq"

    def message(self, message_id: int) -> str:
        return f"{self.prefix}:msg:{message_id}"

    def inflight(self, message_id: int) -> str:
        return f"{self.prefix}:inflight:{message_id}"

    def resend(self, message_id: int) -> str:
        return f"{self.prefix}:resend:{message_id}"

    def counts(self, hour: int) -> str:
        """Counter hash of one UTC hour; ``hour`` is Unix time // 3600."""
        return f"{self.prefix}:counts:{hour}"

    def once(self, name: str) -> str:
        return f"{self.prefix}:once:{name}"
