"""Shared fixtures: real Redis under a per-test prefix, local HTTP servers, Sentry recorder.

Every log line and Sentry event the suite produces is also collected, and the
last test (``test_secrets.py``, moved to the end) checks that none of them
contains a secret or a full phone number.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sentry_sdk

from retrier.broker import connect_redis
from retrier.logs import LogfmtFormatter
from retrier.redact import redactor
from retrier.rules import RuleSet
from retrier.rulesfile import load_rules
from retrier.settings import Settings
from retrier.store import Store
from tests.servers import HTTPServer, SentryServer

REDIS_URL = os.environ.get("RETRIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_RULES = REPO / "config" / "rules.yaml"

#: Secrets the tests use; none may appear in any captured log line or event.
API_KEY = "test-octopods-key-7Qm2xV9kL4pR"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

redactor.add_secrets([API_KEY, HOOK_SECRET])

#: A small rules file for flow tests, independent of the shipped defaults.
TEST_RULES = """\
version: 1
defaults:
  action: retry
  max_attempts: 1
  backoff: {initial: 30s, max: 30m}
rules:
  - name: not-a-whatsapp-user
    match: {contains: "not a WhatsApp user"}
    action: permanent
    examples: ["Recipient is not a WhatsApp user."]
  - name: service-unavailable
    match: {regex: "temporar(il)?y unavailable|try again later"}
    action: retry
    max_attempts: 3
    examples: ["Service temporarily unavailable"]
  - name: unknown-error
    match: {code: 131000}
    action: retry
    max_attempts: 3
    backoff: {initial: 1s, max: 2s}
    examples: ["(#131000) Something went wrong"]
"""


class Captured:
    """Everything the suite printed or sent: log lines, raw log fields, Sentry bodies, process output."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []  # (where, text)

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))


CAPTURED = Captured()


class _CollectingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(LogfmtFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        CAPTURED.add(f"log {record.name}", self.format(record))
        # The fields as the code passed them, before the formatter masks anything.
        CAPTURED.add(f"log message {record.name}", record.getMessage())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                CAPTURED.add(f"log field {record.name}.{key}", str(value))


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_CollectingHandler())
    root.setLevel(logging.DEBUG)
    for noisy in ("httpx", "httpcore", "dramatiq", "urllib3", "pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The secrets check reads what every other test captured, so it runs last.
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_secrets.py"))


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES)
    return load_rules(path)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = connect_redis(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"the tests need Redis at {REDIS_URL}: {error}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A Redis key prefix of this test alone; its keys are deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> Store:
    return Store(redis_client, prefix, dedup_ttl_s=3600, claim_ttl_s=60)


@pytest.fixture
def http_server() -> Iterator[Callable[..., HTTPServer]]:
    """Start HTTP servers on 127.0.0.1 on demand; all are stopped after the test."""
    started: list[HTTPServer] = []

    def start(handler: Any = None) -> HTTPServer:
        server = HTTPServer(handler).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sentry() -> Iterator[SentryServer]:
    """sentry-sdk initialised against a local recorder, with retrier's scrubbing."""
    from retrier import alerts

    server = SentryServer().start()
    settings = Settings(SENTRY_DSN=server.dsn, SENTRY_ENVIRONMENT="test")
    alerts.init_sentry(settings)
    yield server
    sentry_sdk.flush(timeout=5)
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN: events are dropped from here on
    for body in server.raw_bodies:
        CAPTURED.add("sentry", body.decode("utf-8", "replace"))
    server.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def flush_sentry() -> None:
    sentry_sdk.flush(timeout=5)


def capture_process_output(name: str, text: str) -> None:
    """Add a subprocess's output to what the secrets check reads."""
    CAPTURED.add(f"process {name}", text)
