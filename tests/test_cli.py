"""The ``retrier`` command line, run as a real process the way operators run it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrier.simulator import OctopodsSimulator
from retrier.store import Store
from tests.conftest import API_KEY, DEFAULT_RULES, REDIS_URL, REPO, capture_process_output

pytestmark = pytest.mark.slow

PHONE = "+15550003333"


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "retrier.cli", *args],
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    capture_process_output(" ".join(args), result.stdout + result.stderr)
    return result


@pytest.fixture
def simulator() -> Iterator[OctopodsSimulator]:
    sim = OctopodsSimulator(API_KEY)
    yield sim
    sim.close()


def poll_env(prefix: str, simulator: OctopodsSimulator, tmp_path: Path) -> dict[str, str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEFAULT_RULES.read_text())
    return {
        "OCTOPODS_API_KEY": API_KEY,
        "OCTOPODS_BASE_URL": simulator.url,
        "REDIS_URL": REDIS_URL,
        "RETRIER_REDIS_PREFIX": prefix,
        "RETRIER_RULES_PATH": str(rules),
    }


def test_rules_check_shipped_file_passes() -> None:
    result = run("rules", "check", str(DEFAULT_RULES))
    assert result.returncode == 0
    assert "OK" in result.stdout


def test_rules_check_bad_file_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "version: 1\nrules:\n  - name: x\n    match: {contians: 'oops'}\n    action: retry\n"
    )

    result = run("rules", "check", str(bad))

    assert result.returncode == 1
    assert f"{bad}:4:" in result.stderr
    assert "Traceback" not in result.stderr


def test_rules_check_missing_file(tmp_path: Path) -> None:
    result = run("rules", "check", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "absent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_rules_explain_names_rule() -> None:
    result = run(
        "rules",
        "explain",
        "Recipient is not a WhatsApp user.",
        env={"RETRIER_RULES_PATH": str(DEFAULT_RULES)},
    )
    assert result.returncode == 0
    assert "permanent" in result.stdout


def test_invalid_setting_one_line(tmp_path: Path) -> None:
    """A bad setting stops start-up with one line naming the variable, value and expectation."""
    result = run(
        "poll",
        "--once",
        env={"RETRIER_POLL_INTERVAL": "soon", "OCTOPODS_API_KEY": API_KEY},
        cwd=tmp_path,
    )

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1
    assert "RETRIER_POLL_INTERVAL='soon'" in lines[0]
    assert "expected seconds" in lines[0]


def test_missing_api_key_one_line(tmp_path: Path) -> None:
    result = run("poll", "--once", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "retrier: missing setting OCTOPODS_API_KEY: expected the WhatsApp Business API key "
        "from the Octopods app"
    )


def test_secret_masked_in_setting_error(tmp_path: Path) -> None:
    result = run(
        "worker",
        env={
            "RESEND_HOOK_URL": "http://127.0.0.1:9/",
            "RESEND_HOOK_SECRET": "s3cr3t-value-no-prefix",
        },
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "s3cr3t-value-no-prefix" not in result.stderr
    assert "RESEND_HOOK_SECRET" in result.stderr


def test_poll_once_queues_and_reports(
    simulator: OctopodsSimulator, prefix: str, store: Store, tmp_path: Path
) -> None:
    failed = simulator.send(
        status="failed", reason="(#131000) Something went wrong", phone_number=PHONE
    )

    result = run("poll", "--once", env=poll_env(prefix, simulator, tmp_path), cwd=tmp_path)

    assert result.returncode == 0
    assert store.get_record(failed)["state"] == "queued"
    assert re.search(r'event="poll cycle" seen=1 failed=1 queued=1', result.stdout)


def test_poll_dry_run_prints_plan(
    simulator: OctopodsSimulator, prefix: str, store: Store, tmp_path: Path
) -> None:
    failed = simulator.send(
        status="failed", reason="Recipient is not a WhatsApp user.", phone_number=PHONE
    )

    result = run(
        "poll", "--once", "--dry-run", env=poll_env(prefix, simulator, tmp_path), cwd=tmp_path
    )

    assert result.returncode == 0
    assert f"{failed}: not-a-whatsapp-user (permanent) would alert" in result.stdout
    assert store.get_record(failed) == {}


def test_poll_once_rejected_key_exits_1(
    simulator: OctopodsSimulator, prefix: str, tmp_path: Path
) -> None:
    env = {**poll_env(prefix, simulator, tmp_path), "OCTOPODS_API_KEY": "an-old-rotated-key"}

    result = run("poll", "--once", env=env, cwd=tmp_path)

    assert result.returncode == 1
    assert "OCTOPODS_API_KEY" in result.stdout
    assert "an-old-rotated-key" not in result.stdout


def test_poll_loop_stops_on_sigterm(
    simulator: OctopodsSimulator, prefix: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        **poll_env(prefix, simulator, tmp_path),
        "RETRIER_POLL_INTERVAL": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "retrier.cli", "poll"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while simulator.requests < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    capture_process_output("poll", output)

    assert process.returncode == 0
    assert 'event="poller stopped"' in output


def test_status_and_show(
    simulator: OctopodsSimulator, prefix: str, store: Store, tmp_path: Path
) -> None:
    failed = simulator.send(
        status="failed", reason="(#131000) Something went wrong", phone_number=PHONE
    )
    env = poll_env(prefix, simulator, tmp_path)
    run("poll", "--once", env=env, cwd=tmp_path)

    status = run("status", env=env, cwd=tmp_path)
    show = run("show", str(failed), env=env, cwd=tmp_path)
    unknown = run("show", "424242", env=env, cwd=tmp_path)

    assert "queued=1" in status.stdout
    assert "state: queued" in show.stdout
    assert unknown.returncode == 1


def test_demo_prints_summary(tmp_path: Path) -> None:
    """The demo runs the whole pipeline and reports resent and alerted messages."""
    result = run("demo", "--duration", "5", "--quiet", env={"REDIS_URL": REDIS_URL}, timeout_s=90)

    resent = re.search(r"resent\s+(\d+)", result.stdout)
    alerted = re.search(r"permanent and alerted\s+(\d+)", result.stdout)
    assert result.returncode == 0
    assert resent is not None and int(resent.group(1)) > 0
    assert alerted is not None and int(alerted.group(1)) > 0


def test_rules_test_shipped_cases_pass() -> None:
    result = run(
        "rules", "test", str(REPO / "config" / "rules-cases.yaml"), "--rules", str(DEFAULT_RULES)
    )
    assert result.returncode == 0
    assert "cases passed" in result.stdout


def test_rules_test_mismatch_prints_diff(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        '- reason: "Recipient is not a WhatsApp user."\n  rule: default\n  action: retry\n'
    )

    result = run("rules", "test", str(cases), "--rules", str(DEFAULT_RULES))

    assert result.returncode == 1
    assert "expected rule=default action=retry" in result.stderr
    assert "got      rule=not-a-whatsapp-user action=permanent" in result.stderr


def test_resume_without_pause(prefix: str, tmp_path: Path) -> None:
    result = run(
        "resume", env={"REDIS_URL": REDIS_URL, "RETRIER_REDIS_PREFIX": prefix}, cwd=tmp_path
    )
    assert result.returncode == 0
    assert "no pause in force" in result.stdout


def test_resume_lifts_pause(prefix: str, store: Store, tmp_path: Path) -> None:
    store.pause(
        {
            "rule": "payment-problem",
            "message_id": 5,
            "reason": "payment",
            "since": repr(time.time()),
        }
    )

    result = run(
        "resume", env={"REDIS_URL": REDIS_URL, "RETRIER_REDIS_PREFIX": prefix}, cwd=tmp_path
    )

    assert result.returncode == 0
    assert "paused since" in result.stdout
    assert store.get_hash(store.keys.pause) == {}


def test_replay_dry_run_lists_nothing_when_empty(prefix: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": REDIS_URL, "RETRIER_REDIS_PREFIX": prefix}
    result = run("replay", "--dry-run", "--since", "2h", env=env, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("would replay 0 message(s) given up between")


def test_replay_bad_since_one_line(prefix: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": REDIS_URL, "RETRIER_REDIS_PREFIX": prefix}
    result = run("replay", "--since", "yesterday-ish", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "expected a duration ago such as 2h" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_json_is_json(prefix: str, tmp_path: Path) -> None:
    result = run(
        "status",
        "--json",
        env={"REDIS_URL": REDIS_URL, "RETRIER_REDIS_PREFIX": prefix},
        cwd=tmp_path,
    )
    status = json.loads(result.stdout)
    assert status["pause"] is None
    assert status["unclassified"] == []


@pytest.mark.parametrize("duration", ["0", "-1", "nan", "100000"])
def test_demo_rejects_bad_duration(duration: str) -> None:
    result = run("demo", "--duration", duration, "--quiet", env={"REDIS_URL": REDIS_URL})
    assert result.returncode == 2
    assert "expected seconds above 0" in result.stderr


def test_worker_unreachable_redis_one_line(tmp_path: Path) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "RESEND_HOOK_URL": "http://127.0.0.1:9/hook"}
    result = run("worker", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("retrier: cannot reach Redis")
    assert "Traceback" not in result.stderr


def test_replay_honours_dry_run_setting(prefix: str, store: Store, tmp_path: Path) -> None:
    """RETRIER_DRY_RUN=true makes `retrier replay` list, not queue."""
    now = time.time()
    store.claim([(6001, "t")], now=now)
    job = json.dumps(
        {
            "message_id": 6001,
            "root": 6001,
            "token": "t",
            "phone_number": None,
            "sent_at": "2026-04-24T10:19:02Z",
            "failure_reason": "x",
            "rule": "default",
            "max_attempts": 1,
            "backoff_initial_s": 1,
            "backoff_max_s": 1,
        }
    )
    store.finish_attempt(
        6001,
        root=6001,
        state="gave_up",
        counter="",
        fields={"job": job, "rule": "default"},
        now=now,
    )
    env = {"REDIS_URL": REDIS_URL, "RETRIER_REDIS_PREFIX": prefix, "RETRIER_DRY_RUN": "true"}

    result = run("replay", "--since", "1h", env=env, cwd=tmp_path)

    assert "would replay 1 message(s)" in result.stdout
    assert store.get_record(6001)["state"] == "gave_up"
