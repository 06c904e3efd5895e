"""Data and text of ``retrier status`` and ``retrier show``, read from Redis."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from retrier.codes import extract_codes
from retrier.redact import redactor
from retrier.rules import Reason, RuleSet
from retrier.store import Store

#: How many unclassified reasons ``status`` lists.
TOP_UNCLASSIFIED = 10

#: How many resends ``show`` follows along a chain.
MAX_CHAIN = 20


def gather_status(store: Store, *, now: float, rules: RuleSet | None = None) -> dict[str, Any]:
    """Collect everything ``retrier status`` shows, as JSON-ready data.

    With ``rules``, unclassified reasons that a rule now matches are left out.
    """
    keys = store.keys
    backoff = store.get_hash(keys.backoff)
    unclassified = []
    names: set[str] = set()
    for reason, count, sample in store.top_unclassified(TOP_UNCLASSIFIED):
        if rules is not None and rules.classify(Reason(sample)).matched:
            continue
        suggestion = suggest_rule(reason, sample, taken=names)
        unclassified.append(
            {"reason": reason, "count": count, "sample": sample, "suggested_rule": suggestion}
        )

    until = float(backoff.get("until", 0) or 0)
    return {
        "now": now,
        "backoff": {**backoff, "until": until} if until > now else None,
        "pause": store.get_hash(keys.pause) or None,
        "last_poll": store.get_hash(keys.last_poll) or None,
        "active_poller": store.get_hash(keys.poller) or None,
        "lease_holder": store.lease_holder(),
        "rules": store.get_hash(keys.rules) or None,
        "last_hour": store.counts(hours=1, now=now),
        "last_day": store.counts(hours=24, now=now),
        "given_up_replayable": store.count_given_up(),
        "unclassified": unclassified,
    }


def render_status(status: dict[str, Any]) -> str:
    """Format :func:`gather_status` data as a readable table."""
    now = status["now"]
    rows: list[tuple[str, str]] = []

    backoff = status["backoff"]
    rows.append(
        (
            "shared backoff",
            f"until {iso(backoff['until'])} (set by {backoff.get('source', '?')})"
            if backoff
            else "none",
        )
    )
    pause = status["pause"]
    rows.append(
        (
            "resends",
            f"PAUSED since {iso(float(pause.get('since', 0)))} by rule {pause.get('rule')} "
            f"(message {pause.get('message_id')}); fix the account, then run: retrier resume"
            if pause
            else "running",
        )
    )
    last = status["last_poll"]
    if last:
        counts = ", ".join(
            f"{name}={last[name]}" for name in sorted(last) if name not in ("at", "error")
        )
        result = f"FAILED: {last['error']}" if last.get("error") else counts
        rows.append(
            ("last poll", f"{iso(float(last['at']))} ({ago(now, float(last['at']))}): {result}")
        )
    else:
        rows.append(("last poll", "never"))
    poller = status["active_poller"]
    holder = status["lease_holder"]
    if holder:
        rows.append(("active poller", f"{holder} (holds the lease)"))
    elif poller:
        rows.append(("active poller", f"{poller['id']} (no lease)"))
    else:
        rows.append(("active poller", "none seen in the last 3 intervals"))

    rules = status["rules"]
    if rules:
        line = f"{rules.get('path')} version {rules.get('version')} digest {rules.get('digest')}"
        if rules.get("error"):
            line += f"; LAST RELOAD FAILED (kept the last good rules): {rules['error']}"
        rows.append(("rules", line))
    else:
        rows.append(("rules", "not reported yet (no poller has run)"))

    for window, label in (("last_hour", "this UTC hour"), ("last_day", "last 24 hours")):
        counts = status[window]
        shown = ", ".join(f"{name}={value}" for name, value in sorted(counts.items()))
        rows.append((label, shown or "nothing yet"))
    rows.append(
        (
            "replayable",
            f"{status['given_up_replayable']} given-up message(s): retrier replay --dry-run",
        )
    )

    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if status["unclassified"]:
        lines += ["", "top unclassified reasons (count, reason), each with a rule to paste:"]
        for entry in status["unclassified"]:
            lines.append(f"  {entry['count']:>6}  {entry['reason']}")
            lines += ["          " + line for line in entry["suggested_rule"].splitlines()]
    return redactor.text("\n".join(lines))


def suggest_rule(reason: str, sample: str, *, taken: set[str] | None = None) -> str:
    """Return a rules-file entry, ready to paste under ``rules:``, that matches a reason.

    The entry matches the reason's code when the text contains one, and its
    longest literal part otherwise. Ops decide the action, which is written as
    ``retry``. A name already in ``taken`` gets a numbered suffix, and the name
    chosen is added to ``taken``.
    """
    codes = extract_codes(sample)
    words = re.findall(r"[a-z0-9]+", reason.replace("#", " "))
    base = "-".join(words[:5])[:40].strip("-") or "new-reason"
    name = base
    taken = taken if taken is not None else set()
    suffix = 2
    while name in taken:
        name = f"{base}-{suffix}"
        suffix += 1
    taken.add(name)
    if codes:
        match = f"{{code: {codes[0]}}}"
    else:
        parts = [part.strip() for part in reason.split("#")]
        match = f"{{contains: {json.dumps(max(parts, key=len))}}}"
    return "\n".join(
        [
            f"  - name: {name}",
            f"    match: {match}",
            "    action: retry          # or permanent: decide",
            f"    examples: [{json.dumps(redactor.text(sample))}]",
        ]
    )


def render_message(store: Store, message_id: int) -> str | None:
    """Format everything recorded about one message, or None when nothing is."""
    record = store.get_record(message_id)
    if not record:
        return None

    record.setdefault("action", "retry")
    lines = [f"message {message_id}"]
    for name, label in (
        ("state", "state"),
        ("rule", "rule"),
        ("action", "action"),
        ("reason", "failure reason"),
        ("code", "failure code"),
        ("cause", "cause"),
        ("replays", "replays"),
    ):
        if name in record:
            lines.append(f"  {label}: {record[name]}")
    for name, label in (
        ("sent_at", "sent"),
        ("seen_at", "seen"),
        ("updated_at", "updated"),
        ("next_at", "next attempt"),
    ):
        if name in record:
            lines.append(f"  {label}: {_moment(record[name])}")

    attempts = sorted(
        (int(name[1:]), value) for name, value in record.items() if re.fullmatch(r"a\d+", name)
    )
    if attempts:
        lines.append("  hook attempts:")
        for number, value in attempts:
            moment, status, detail = [*value.split("|", 2), "", ""][:3]
            lines.append(f"    {number}. {iso(float(moment))}  answer {status}  {detail}".rstrip())
    lines.append(f"  resend chain: {render_chain(store, message_id, record)}")
    return redactor.text("\n".join(lines))


def render_chain(store: Store, message_id: int, record: dict[str, str]) -> str:
    """Format the resend chain a message belongs to, from the original onwards."""
    root = int(record.get("root") or message_id)
    chain: list[str] = []
    current: int | None = root
    while current is not None and len(chain) < MAX_CHAIN:
        data = record if current == message_id else store.get_record(current)
        marker = " (this message)" if current == message_id else ""
        chain.append(f"{current} [{data.get('state', 'not failed')}]{marker}")
        resent_as = data.get("resent_as")
        current = int(resent_as) if resent_as else None
    return " -> ".join(chain)


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _moment(raw: str) -> str:
    # Records keep Unix seconds; text in another form is shown as it is.
    try:
        return iso(float(raw))
    except (ValueError, OverflowError):
        return raw


def ago(now: float, moment: float) -> str:
    seconds = max(0, int(now - moment))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
