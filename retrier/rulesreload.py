"""The rules the poller classifies with, reloaded when the file changes under it.

Where the rules file is a mounted config map or lives on a VM, ops edit it
under a running poller. At each cycle :meth:`RulesSource.current` looks at the
file's modification time, size and inode; when they change it loads the file
again. A valid edit is used from that cycle on. An invalid one keeps the last
good rules, logs the error with file and line, sends one Sentry event per bad
version of the file, and is shown by ``retrier status`` until a valid edit
replaces it. On Heroku the release phase (``retrier rules check``) is the gate
instead, and the file never changes under a running dyno.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import redis

from retrier import alerts
from retrier.errors import RulesError, StoreError
from retrier.rules import RuleSet
from retrier.rulesfile import check_rules, load_rules
from retrier.store import Store

logger = logging.getLogger(__name__)


class RulesSource:
    """Holds the last good rule set and reloads it from ``path`` when the file changes.

    Args:
        path: the rules file.
        store: where the rules version and any reload error are published for
            ``retrier status``; None publishes nothing (dry runs, tests).
    """

    def __init__(self, path: Path | str, *, store: Store | None = None) -> None:
        self.path = Path(path)
        self.store = store
        self._signature = self._stat()
        self._failed = False
        self._rules = load_rules(self.path)  # an invalid file at start-up stops the poller
        self._publish({"digest": self._rules.digest, "version": self._rules.version, "error": ""})

    @property
    def rules(self) -> RuleSet:
        return self._rules

    def current(self) -> RuleSet:
        """Return the rules to use now, reloading the file first if it changed."""
        signature = self._stat()
        if signature == self._signature:
            return self._rules
        self._signature = signature

        # An edit must pass what the release phase checks, examples included.
        problems = check_rules(self.path)
        if problems:
            self._reject(problems[0])
            return self._rules
        try:
            fresh = load_rules(self.path)
        except RulesError as error:  # the file changed again since the check
            self._reject(error)
            return self._rules

        if self._failed:
            logger.info(
                "rules file valid again", extra={"path": str(self.path), "digest": fresh.digest}
            )
        self._failed = False
        if fresh.digest != self._rules.digest:
            logger.info(
                "rules reloaded",
                extra={
                    "path": str(self.path),
                    "digest": fresh.digest,
                    "previous": self._rules.digest,
                },
            )
        self._rules = fresh
        self._publish({"digest": fresh.digest, "version": fresh.version, "error": ""})
        return fresh

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _reject(self, error: RulesError) -> None:
        self._failed = True
        digest = _file_digest(self.path)
        logger.error(
            "rules reload failed: keeping the last good rules",
            extra={
                "path": str(self.path),
                "line": error.line,
                "error": str(error),
                "kept": self._rules.digest,
            },
        )
        self._publish({"error": str(error), "error_digest": digest})
        first = True
        if self.store is not None:
            try:
                first = self.store.once(f"rules-invalid:{digest}", ttl_s=self.store.dedup_ttl_s)
            except StoreError as store_error:
                logger.warning("alert flag unavailable: redis", extra={"error": str(store_error)})
        if first:
            alerts.alert_rules_invalid(error=str(error), digest=digest)

    def _publish(self, fields: dict[str, str | int]) -> None:
        if self.store is None:
            return
        fields = {**fields, "path": str(self.path), "at": repr(time.time())}
        try:
            self.store.client.hset(self.store.keys.rules, mapping=fields)  # type: ignore[arg-type]
        except redis.RedisError as error:  # status is informative; the poller goes on
            logger.warning("rules status not published", extra={"error": str(error)})


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"
