"""Sentry alerts: permanent failures, given-up resends, a rejected API key.

Every alert is also logged, so that without ``SENTRY_DSN`` ops still see it in
the logs. Events are grouped by a fingerprint (per rule for message alerts) and
tagged with the rule and message id. Nothing secret and no full phone number
leaves the process: collection of user data, bodies and frame variables is
off, and :func:`scrub_event` runs as ``before_send`` as well, because sentry-sdk's
Dramatiq integration attaches actor arguments to events even with
``send_default_pii=False`` and its EventScrubber matches only dictionary keys.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import sentry_sdk
from sentry_sdk.crons import MonitorStatus, capture_checkin
from sentry_sdk.integrations.dramatiq import DramatiqIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from retrier import __version__
from retrier.redact import mask_phone, redactor
from retrier.settings import Settings

logger = logging.getLogger(__name__)

Level = Literal["fatal", "error", "warning", "info"]

#: Dictionary keys whose values are phone numbers wherever they appear in an event.
_PHONE_KEYS = frozenset({"phone_number", "user_phone_number", "phone"})


def init_sentry(settings: Settings) -> bool:
    """Start sentry-sdk when ``SENTRY_DSN`` is set; return whether it started.

    Must run before the Dramatiq broker is built: the integration hooks into
    ``Broker.__init__``.
    """
    if settings.sentry_dsn is None:
        logger.info("sentry disabled: SENTRY_DSN is not set, alerts are only logged")
        return False

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=f"retrier@{__version__}",
        # No user data, no message bodies (the Dramatiq integration attaches job
        # arguments, phone numbers included, as a request body), no frame locals.
        data_collection={
            "user_info": False,
            "http_bodies": [],
            "stack_frame_variables": False,
            "queues": False,
        },
        before_send=scrub_event,
        integrations=[
            DramatiqIntegration(),
            # Log lines become breadcrumbs only: alerts are raised on purpose below.
            LoggingIntegration(level=logging.INFO, event_level=None),
        ],
    )
    return True


def scrub_event(event: Any, hint: Any) -> Any:
    """Mask phone numbers and filter secrets anywhere in a Sentry event."""
    return redactor.data(_mask_phone_keys(event))


def _mask_phone_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: mask_phone(str(item)) if key in _PHONE_KEYS and item else _mask_phone_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_phone_keys(item) for item in value]
    return value


def send_alert(
    title: str,
    *,
    fingerprint: list[str],
    level: Level = "error",
    tags: Mapping[str, str | int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Log an alert and, when Sentry is on, send it as one event.

    ``fingerprint`` groups the events into one Sentry issue; ``tags`` are
    searchable; ``extra`` is shown on the event. Phone numbers must be masked
    by the caller (the scrubber is a second line of defence, not the first).
    """
    tags = dict(tags or {})
    extra = dict(extra or {})
    log_level = logging.WARNING if level in ("warning", "info") else logging.ERROR
    logger.log(log_level, "alert", extra={"title": title, **tags, **extra})

    if not sentry_sdk.get_client().is_active():
        return
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = fingerprint
        scope.level = level
        for key, value in tags.items():
            scope.set_tag(key, str(value))
        for key, value in extra.items():
            scope.set_extra(key, value)
        sentry_sdk.capture_message(title, level=level)


def alert_failure(
    *, message_id: int, rule: str, action: str, reason: str, phone_number: str | None
) -> None:
    """Alert on a failure whose rule asks for it: one Sentry issue per rule.

    Permanent rules alert by default; a retry rule alerts when it sets ``alert``
    (the message is still resent).
    """
    title = (
        f"Permanent WhatsApp failure: {rule}"
        if action == "permanent"
        else f"WhatsApp failure ({action}): {rule}"
    )
    send_alert(
        title,
        fingerprint=["retrier", action, rule],
        level="warning",
        tags={"rule": rule, "message_id": message_id, "action": action},
        extra={"failure_reason": reason, "phone": mask_phone(phone_number)},
    )


def alert_gave_up(
    *, message_id: int, rule: str, attempt: int, cause: str, phone_number: str | None
) -> None:
    """Alert on a resend retrier stopped trying: hook rejected it or attempts ran out."""
    send_alert(
        f"Resend given up: {rule}",
        fingerprint=["retrier", "gave-up", rule],
        level="error",
        tags={"rule": rule, "message_id": message_id, "attempt": attempt},
        extra={"cause": cause, "phone": mask_phone(phone_number)},
    )


def alert_key_rejected(detail: str) -> None:
    """Alert that Octopods rejects the API key: nothing works until it is replaced."""
    send_alert(
        "Octopods rejected the API key",
        fingerprint=["retrier", "octopods-key-rejected"],
        level="fatal",
        extra={"detail": detail},
    )


def alert_paused(*, rule: str, message_id: int, reason: str) -> None:
    """Alert that an account-level failure holds every resend until ``retrier resume``."""
    send_alert(
        f"Resends paused by an account-level failure: {rule}",
        fingerprint=["retrier", "paused", rule],
        level="fatal",
        tags={"rule": rule, "message_id": message_id, "action": "pause"},
        extra={"failure_reason": reason, "fix": "fix the account, then run: retrier resume"},
    )


def alert_unclassified(*, reason: str, sample: str, message_id: int) -> None:
    """Alert on the first sighting of a failure reason that no rule matches."""
    digest = hashlib.sha256(reason.encode()).hexdigest()[:12]
    send_alert(
        "New unclassified failure reason",
        fingerprint=["retrier", "unclassified", digest],
        level="warning",
        tags={"rule": "default", "message_id": message_id},
        extra={"normalised_reason": reason, "failure_reason": sample},
    )


def alert_rules_invalid(*, error: str, digest: str) -> None:
    """Alert that an edit of the rules file is invalid; the last good rules stay in use."""
    send_alert(
        "Rules file edit rejected: the last good rules stay in use",
        fingerprint=["retrier", "rules-invalid"],
        level="error",
        tags={"rules_digest": digest},
        extra={"error": error},
    )


def alert_rules_unusable(*, error: str) -> None:
    """Alert that the poller cannot start: its rules file is invalid and no good rules are loaded."""
    send_alert(
        "Poller cannot start: the rules file is invalid",
        fingerprint=["retrier", "rules-invalid-at-start"],
        level="fatal",
        extra={
            "error": error,
            "fix": "fix the file (retrier rules check shows the line), then restart the poller",
        },
    )


def alert_suppressed(*, hour_start: str, counts: Mapping[str, int]) -> None:
    """Report, in one event, the alerts held back in one hour by the per-rule limit."""
    send_alert(
        "Alerts suppressed by the per-rule hourly limit",
        fingerprint=["retrier", "alerts-suppressed"],
        level="warning",
        tags={"hour": hour_start},
        extra={"suppressed": dict(counts), "total": sum(counts.values())},
    )


def alert_coverage_gap(*, after_id: int, before_id: int, interval_s: float) -> None:
    """Alert that a full page did not reach back to the last message seen.

    Sends between the two ids may have failed unseen: the API lists only the
    newest 100 and has no paging.
    """
    send_alert(
        "Coverage gap: failed sends may have been missed",
        fingerprint=["retrier", "coverage-gap"],
        level="warning",
        extra={
            "after_message_id": after_id,
            "before_message_id": before_id,
            "poll_interval_s": interval_s,
            "fix": "poll more often (RETRIER_POLL_INTERVAL) or send fewer messages per interval",
        },
    )


def check_in(*, slug: str, ok: bool, interval_s: float) -> None:
    """Check the poller in to a Sentry Crons interval monitor (created on first use).

    A poller that stops checking in, or checks in with an error, raises the
    monitor's alert in Sentry. The interval is rounded up to whole minutes,
    the unit the monitor counts in.
    """
    if not sentry_sdk.get_client().is_active():
        return
    minutes = max(1, math.ceil(interval_s / 60))
    capture_checkin(
        monitor_slug=slug,
        status=MonitorStatus.OK if ok else MonitorStatus.ERROR,
        monitor_config={
            "schedule": {"type": "interval", "value": minutes, "unit": "minute"},
            "checkin_margin": minutes + 1,
            "max_runtime": minutes + 1,
            "failure_issue_threshold": 2,
            "recovery_threshold": 1,
        },
    )


def capture_unexpected(error: BaseException) -> None:
    """Send an exception retrier did not expect (a bug, or a failure it cannot classify)."""
    if sentry_sdk.get_client().is_active():
        sentry_sdk.capture_exception(error)


def flush(timeout_s: float = 5.0) -> None:
    """Send queued events before the process exits."""
    if sentry_sdk.get_client().is_active():
        sentry_sdk.flush(timeout=timeout_s)
