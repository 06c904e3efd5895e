"""Operations features end to end: pause and resume, replay, unclassified reasons,
flood control, Sentry Crons check-ins, status and show. Real Redis, a real
Dramatiq worker, and local Octopods, hook and Sentry servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest

from retrier.actors import PAUSE_RECHECK_S, Resender, declare_resend_actor
from retrier.broker import build_broker
from retrier.flood import AlertBudget
from retrier.hook import HookClient
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.replay import replay
from retrier.rules import Reason, RuleSet
from retrier.rulesfile import load_rules
from retrier.simulator import OctopodsSimulator
from retrier.status import gather_status, render_message, render_status, suggest_rule
from retrier.store import Store
from tests.conftest import API_KEY, HOOK_SECRET, REDIS_URL, TEST_RULES, flush_sentry, wait_for
from tests.servers import HTTPServer, Response, SentryServer

PAUSE_RULES = (
    TEST_RULES
    + """\
  - name: payment-problem
    match: {code: 131042}
    action: pause
    examples: ["(#131042) Business eligibility payment issue"]
"""
)


@dataclass
class Stack:
    simulator: OctopodsSimulator
    hook: HTTPServer
    store: Store
    poller: Poller
    broker: dramatiq.Broker


@pytest.fixture
def pause_rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "pause-rules.yaml"
    path.write_text(PAUSE_RULES)
    return load_rules(path)


@pytest.fixture
def stack(
    store: Store, prefix: str, pause_rules: RuleSet, http_server: Callable[..., HTTPServer]
) -> Iterator[Stack]:
    simulator = OctopodsSimulator(API_KEY)
    hook = http_server()
    hook.script([Response(200, {})])
    broker = build_broker(REDIS_URL, prefix)
    hook_client = HookClient(hook.url, secret=HOOK_SECRET, timeout_s=5)
    declare_resend_actor(broker, Resender(store, hook_client))
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    client = OctopodsClient(simulator.url, API_KEY)
    poller = Poller(
        client,
        store,
        lambda: pause_rules,
        broker_enqueue(broker),
        max_message_age_s=86400,
        budget=AlertBudget(store.client, prefix, limit=2),
    )
    yield Stack(simulator, hook, store, poller, broker)
    worker.stop(timeout=10_000)
    client.close()
    hook_client.close()
    broker.close()
    simulator.close()


def hook_ids(stack: Stack) -> list[int]:
    return [request.json()["message_id"] for request in stack.hook.requests]


def test_pause_holds_resends_until_resume(sentry: SentryServer, stack: Stack) -> None:
    """An account-level failure holds every resend, alerts once as fatal, and resume releases them."""
    payment = stack.simulator.send(
        status="failed", reason="(#131042) Business eligibility payment issue"
    )
    retryable = stack.simulator.send(status="failed", reason="Service temporarily unavailable")
    stack.poller.run_cycle()
    later = stack.simulator.send(
        status="failed", reason="(#131042) Business eligibility payment issue"
    )
    stack.poller.run_cycle()

    time.sleep(0.8)
    flush_sentry()
    held_calls = list(stack.hook.requests)
    paused_events = [event for event in sentry.error_events() if event["level"] == "fatal"]
    lifted = stack.store.resume()

    assert held_calls == []
    assert len(paused_events) == 1
    assert lifted["rule"] == "payment-problem"
    assert wait_for(
        lambda: {payment, retryable, later} <= set(hook_ids(stack)), timeout_s=PAUSE_RECHECK_S + 10
    )


def test_status_shows_pause(stack: Stack) -> None:
    stack.simulator.send(status="failed", reason="(#131042) Business eligibility payment issue")
    stack.poller.run_cycle()

    text = render_status(gather_status(stack.store, now=time.time()))

    assert "PAUSED" in text
    assert "retrier resume" in text


def test_replay_resends_given_up_once(sentry: SentryServer, stack: Stack) -> None:
    """A resend given up while the hook was down goes out once when replayed, even by two replays."""
    stack.hook.script([Response(503)])
    failed = stack.simulator.send(
        status="failed", reason="Gateway glitch 1"
    )  # default: max_attempts 1
    stack.poller.run_cycle()
    assert wait_for(lambda: stack.store.get_record(failed).get("state") == "gave_up")
    stack.hook.script([Response(200, {})])
    enqueue = broker_enqueue(stack.broker)
    now = time.time()

    first = replay(
        stack.store, enqueue, since=now - 60, until=now + 1, rule=None, dry_run=False, now=now
    )
    second = replay(
        stack.store, enqueue, since=now - 60, until=now + 1, rule=None, dry_run=False, now=now
    )

    assert first.queued == [failed]
    assert second.found == []
    assert wait_for(lambda: stack.store.get_record(failed).get("state") == "resent")
    time.sleep(0.3)
    assert hook_ids(stack) == [failed, failed]


def test_replay_dry_run_and_rule_filter(stack: Stack) -> None:
    stack.hook.script([Response(503)])
    failed = stack.simulator.send(status="failed", reason="Gateway glitch 2")
    stack.poller.run_cycle()
    assert wait_for(lambda: stack.store.get_record(failed).get("state") == "gave_up")
    now = time.time()
    enqueue = broker_enqueue(stack.broker)

    other_rule = replay(
        stack.store,
        enqueue,
        since=0,
        until=now + 1,
        rule="service-unavailable",
        dry_run=False,
        now=now,
    )
    dry = replay(
        stack.store, enqueue, since=0, until=now + 1, rule="default", dry_run=True, now=now
    )

    assert other_rule.found == []
    assert dry.found == [(failed, "default")]
    assert stack.store.get_record(failed)["state"] == "gave_up"


def test_unclassified_first_sighting_alerts_once(sentry: SentryServer, stack: Stack) -> None:
    """Each new normalised unclassified reason raises one event, whatever ids it carries."""
    stack.simulator.send(status="failed", reason="Carrier said no to 4412345678")
    stack.poller.run_cycle()
    stack.simulator.send(status="failed", reason="Carrier said NO to 4498765432")
    stack.poller.run_cycle()
    flush_sentry()

    events = [
        event
        for event in sentry.error_events()
        if event["message"] == "New unclassified failure reason"
    ]
    top = stack.store.top_unclassified(5)
    assert len(events) == 1
    assert top[0][:2] == ("carrier said no to #", 2)


def test_flood_control_limits_and_summarises(sentry: SentryServer, stack: Stack) -> None:
    """Past the per-rule hourly limit alerts are counted, then summarised in one event."""
    for _ in range(5):
        stack.simulator.send(status="failed", reason="Recipient is not a WhatsApp user.")
    stack.poller.run_cycle()
    assert stack.poller.budget is not None
    stack.poller.budget.report_previous_hour(now=time.time() + 3600)
    stack.poller.budget.report_previous_hour(now=time.time() + 3600)
    flush_sentry()

    permanent = [
        event for event in sentry.error_events() if event["message"].startswith("Permanent")
    ]
    summaries = [
        event for event in sentry.error_events() if event["message"].startswith("Alerts suppressed")
    ]
    assert len(permanent) == 2
    assert len(summaries) == 1
    assert summaries[0]["extra"]["suppressed"] == {"permanent:not-a-whatsapp-user": 3}


def test_poller_checks_in_to_crons(sentry: SentryServer, stack: Stack) -> None:
    stack.poller.monitor_slug = "retrier-poller-test"
    stop = threading.Event()
    thread = threading.Thread(
        target=stack.poller.run_forever, args=(stop,), kwargs={"interval_s": 0.2}
    )
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=10)
    flush_sentry()

    check_ins = [event for event in sentry.events if event["_item_type"] == "check_in"]
    assert len(check_ins) >= 2
    assert check_ins[0]["monitor_slug"] == "retrier-poller-test"
    assert check_ins[0]["status"] == "ok"
    assert check_ins[0]["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 1,
        "unit": "minute",
    }


def test_show_lists_attempts_and_chain(stack: Stack) -> None:
    stack.hook.script([Response(503), Response(200, {"message_id": 99001})])
    failed = stack.simulator.send(
        status="failed", reason="(#131000) Something went wrong"
    )  # 1 s backoff
    stack.poller.run_cycle()
    assert wait_for(lambda: stack.store.get_record(failed).get("state") == "resent")

    text = render_message(stack.store, failed)

    assert text is not None
    assert "rule: unknown-error" in text
    assert "answer 503" in text
    assert "answer 200" in text
    assert f"resend chain: {failed} [resent] (this message) -> 99001 [not failed]" in text


def test_status_json_fields(stack: Stack) -> None:
    stack.simulator.send(status="failed", reason="Service temporarily unavailable")
    stack.poller.run_cycle()

    status = gather_status(stack.store, now=time.time())

    assert status["last_hour"]["queued"] == 1
    assert status["last_poll"]["failed"] == "1"
    assert status["active_poller"]["id"] == stack.poller.poller_id
    assert status["pause"] is None


def test_suggested_rule_loads(tmp_path: Path) -> None:
    """The rule `status` suggests for an unclassified reason is valid and matches it."""
    snippet = suggest_rule("carrier said no to #", "Carrier said no to 4412345678")
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES + snippet + "\n")

    rules = load_rules(path)

    assert rules.classify(Reason("Carrier said no to 4412345678")).rule == "carrier-said-no-to"


def test_status_hides_reasons_now_covered(stack: Stack, tmp_path: Path) -> None:
    """An unclassified reason that a rule added since covers is no longer offered."""
    stack.simulator.send(status="failed", reason="Gateway glitch 7")
    stack.poller.run_cycle()
    path = tmp_path / "covered.yaml"
    glitch = (
        "  - name: glitch\n"
        '    match: {contains: "gateway glitch"}\n'
        "    action: retry\n"
        '    examples: ["Gateway glitch 7"]\n'
    )
    path.write_text(PAUSE_RULES + glitch)

    before = gather_status(stack.store, now=time.time())
    after = gather_status(stack.store, now=time.time(), rules=load_rules(path))

    assert len(before["unclassified"]) == 1
    assert after["unclassified"] == []
