"""``retrier worker`` as a real process: Heroku-style SIGTERM while a hook call is in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from retrier.actors import Job, enqueue_resend
from retrier.broker import build_broker
from retrier.keys import Keys
from retrier.store import Store
from tests.conftest import HOOK_SECRET, REDIS_URL, capture_process_output, wait_for
from tests.servers import HTTPServer, Response

pytestmark = pytest.mark.slow


def worker_env(prefix: str, hook_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": REDIS_URL,
        "RETRIER_REDIS_PREFIX": prefix,
        "RESEND_HOOK_URL": hook_url,
        "RESEND_HOOK_SECRET": HOOK_SECRET,
        "LOG_LEVEL": "INFO",
    }


def start_worker(env: dict[str, str], cwd: Path, threads: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "retrier.cli", "worker", "--threads", str(threads)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a dyno is
    )


def make_job(store: Store, message_id: int) -> Job:
    token = uuid.uuid4().hex
    store.claim([(message_id, token)], now=time.time())
    return Job(
        message_id=message_id,
        root=message_id,
        token=token,
        phone_number="+15550002222",
        sent_at="2026-04-24T10:19:02Z",
        failure_reason="(#131000) Something went wrong",
        rule="unknown-error",
        max_attempts=3,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_sigterm_to_dyno_finishes_in_flight_call(
    redis_client: redis.Redis,
    prefix: str,
    http_server: Callable[..., HTTPServer],
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    """SIGTERM to every process of the worker mid-call: the call completes and is recorded,
    prefetched messages go back to the queue, and a new worker finishes them."""
    hook = http_server()
    hook.script([Response(200, {"message_id": 77001}, delay_s=2.0), Response(200, {})])
    store = Store(redis_client, prefix)
    broker = build_broker(REDIS_URL, prefix)
    for message_id in (901, 902, 903):
        enqueue_resend(broker, make_job(store, message_id))
    env = worker_env(prefix, hook.url)
    worker = start_worker(env, tmp_path)
    processes.append(worker)

    assert wait_for(lambda: len(hook.requests) == 1)
    os.killpg(worker.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGTERM)  # a second one, as the dramatiq command would forward
    output, _ = worker.communicate(timeout=30)
    capture_process_output("worker", output)

    assert worker.returncode == 0
    assert store.get_record(901)["state"] == "resent"
    assert len(hook.requests) == 1
    namespace = Keys(prefix).broker_namespace
    stranded = [
        key
        for key in redis_client.scan_iter(match=f"{namespace}:__acks__.*")
        if redis_client.scard(key)
    ]
    assert stranded == []
    assert redis_client.llen(f"{namespace}:resend") == 2

    second = start_worker(env, tmp_path, threads=2)
    processes.append(second)
    assert wait_for(lambda: store.get_record(903).get("state") == "resent")
    assert wait_for(lambda: store.get_record(902).get("state") == "resent")
    os.killpg(second.pid, signal.SIGTERM)
    output, _ = second.communicate(timeout=30)
    capture_process_output("worker", output)
    ids = sorted(request.json()["message_id"] for request in hook.requests)
    assert ids == [901, 902, 903]
    broker.close()


def test_worker_without_hook_url_stops_with_one_line(tmp_path: Path, prefix: str) -> None:
    env = worker_env(prefix, "")
    del env["RESEND_HOOK_URL"]
    result = subprocess.run(
        [sys.executable, "-m", "retrier.cli", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    capture_process_output("worker", result.stdout + result.stderr)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "retrier: missing setting RESEND_HOOK_URL: expected the http(s) URL of your resend endpoint"
    ]
