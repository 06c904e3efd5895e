"""Hot reload of the rules file under a running poller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrier.errors import RulesError
from retrier.rules import Reason
from retrier.rulesreload import RulesSource
from retrier.store import Store
from tests.conftest import TEST_RULES, flush_sentry
from tests.servers import SentryServer

EXTRA_RULE = """\
  - name: gateway-hiccup
    match: {contains: "gateway hiccup"}
    action: permanent
    examples: ["Gateway hiccup"]
"""


def write(path: Path, text: str) -> None:
    """Write ``text`` and move the modification time on, as an editor's save would."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    write(path, TEST_RULES)
    return path


def test_unchanged_file_not_reloaded(rules_path: Path, store: Store) -> None:
    source = RulesSource(rules_path, store=store)
    assert source.current() is source.rules


def test_valid_edit_used_next_cycle(rules_path: Path, store: Store) -> None:
    source = RulesSource(rules_path, store=store)
    write(rules_path, TEST_RULES + EXTRA_RULE)

    decision = source.current().classify(Reason("Gateway hiccup on node 4"))

    assert decision.rule == "gateway-hiccup"
    assert store.get_hash(store.keys.rules)["digest"] == source.rules.digest


def test_invalid_edit_keeps_last_good(
    sentry: SentryServer, rules_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken edit keeps the last good rules, logs file and line, alerts once, shows in status."""
    source = RulesSource(rules_path, store=store)
    good = source.rules.digest
    write(
        rules_path, TEST_RULES + "  - name: broken\n    match: {contians: x}\n    action: retry\n"
    )

    for _ in range(3):
        kept = source.current()
    flush_sentry()

    failures = [
        record for record in caplog.records if record.getMessage().startswith("rules reload failed")
    ]
    assert kept.digest == good
    assert len(failures) == 1
    assert f"{rules_path}:" in failures[0].error  # type: ignore[attr-defined]
    assert len(sentry.error_events()) == 1
    assert "contians" in store.get_hash(store.keys.rules)["error"]


def test_each_bad_version_alerts_once(sentry: SentryServer, rules_path: Path, store: Store) -> None:
    source = RulesSource(rules_path, store=store)
    write(rules_path, "version: 1\nrules: [oops\n")
    source.current()
    write(rules_path, "version: 2\nrules: []\n")
    source.current()
    flush_sentry()
    assert len(sentry.error_events()) == 2


def test_fixed_edit_clears_error(rules_path: Path, store: Store) -> None:
    source = RulesSource(rules_path, store=store)
    write(rules_path, "not: [valid\n")
    source.current()
    write(rules_path, TEST_RULES + EXTRA_RULE)
    source.current()
    assert store.get_hash(store.keys.rules)["error"] == ""


def test_deleted_file_keeps_last_good(rules_path: Path, store: Store) -> None:
    source = RulesSource(rules_path, store=store)
    good = source.rules.digest
    rules_path.unlink()
    assert source.current().digest == good


def test_invalid_file_at_start_raises(tmp_path: Path) -> None:
    """At start-up there are no last good rules: an invalid file stops the poller."""
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules: [oops\n")
    with pytest.raises(RulesError):
        RulesSource(path)


def test_edit_failing_examples_rejected(rules_path: Path, store: Store) -> None:
    """A live edit must pass what `rules check` checks, examples included."""
    source = RulesSource(rules_path, store=store)
    good = source.rules.digest
    shadowed = (
        "  - name: late\n"
        '    match: {contains: "later"}\n'
        "    action: permanent\n"
        '    examples: ["try again later"]\n'
    )
    write(rules_path, TEST_RULES + shadowed)

    assert source.current().digest == good
    assert "late" in store.get_hash(store.keys.rules)["error"]
