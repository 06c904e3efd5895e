"""``retrier demo``: the whole pipeline on this machine, then a summary.

It starts an Octopods simulator and a resend hook on 127.0.0.1, a Dramatiq
worker and the poller, on the Redis at ``REDIS_URL`` (or, when nothing answers
there and ``redis-server`` is installed, a private one on a free port), under a
fresh key prefix that is deleted afterwards. Backoffs and delays run 1000 times
faster than the rules say, so that retries show within seconds.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator

import dramatiq
import redis
from dramatiq.errors import QueueJoinTimeout

from retrier.actors import QUEUE_NAME, Resender, declare_resend_actor
from retrier.broker import RedisStager, build_broker, connect_redis
from retrier.errors import ConfigError
from retrier.hook import HookClient
from retrier.logs import configure_logging
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.redact import redactor
from retrier.rules import Classification, Policy, Reason, RuleSet
from retrier.rulesfile import load_rules
from retrier.settings import load_settings
from retrier.simulator import OctopodsSimulator, ResendHook, recent
from retrier.store import Store

logger = logging.getLogger(__name__)

#: Rule durations are divided by this in the demo.
SPEED_UP = 1000.0

#: Longest run the demo accepts, in seconds.
MAX_DURATION_S = 600.0


class FastRules:
    """Classifies with a rule set, with every delay and backoff divided by ``SPEED_UP``."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def classify(self, reason: Reason) -> Classification:
        decision = self.rules.classify(reason)
        return dataclasses.replace(decision, policy=self._faster(decision.policy))

    def policy_for(self, name: str) -> Policy:
        return self._faster(self.rules.policy_for(name))

    def _faster(self, policy: Policy) -> Policy:
        return dataclasses.replace(
            policy,
            delay_s=policy.delay_s / SPEED_UP,
            backoff_initial_s=policy.backoff_initial_s / SPEED_UP,
            backoff_max_s=policy.backoff_max_s / SPEED_UP,
        )


def run_demo(*, duration_s: float = 12.0, quiet: bool = False) -> int:
    """Run the demo for ``duration_s`` seconds, print the summary, and return 0."""
    settings = load_settings()
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ConfigError(
            f"got --duration {duration_s!r}, expected seconds above 0 and at most {MAX_DURATION_S:g}"
        )
    configure_logging("ERROR" if quiet else "INFO", stream=sys.stderr)
    rules_path = settings.rules_path
    if not rules_path.exists():
        raise ConfigError(
            f"rules file {str(rules_path)!r} not found: run the demo from the repository root "
            "or set RETRIER_RULES_PATH"
        )
    rules = load_rules(rules_path)

    with _redis(settings.redis_url) as redis_url:
        prefix = f"retrier-demo-{secrets.token_hex(4)}"
        try:
            summary = _run(redis_url, prefix, rules, duration_s)
        finally:
            _delete_keys(redis_url, prefix)
    if redis_url != settings.redis_url:
        print(
            f"nothing answered at REDIS_URL={redactor.text(settings.redis_url)}, so the demo ran on "
            f"a private redis-server at {redis_url}, now stopped"
        )
    print(summary.render(redis_url=redis_url, prefix=prefix, duration_s=duration_s))
    return 0


@dataclasses.dataclass
class Summary:
    """What the demo saw and did, from the simulator, the hook and the store."""

    listed: int
    counts: dict[str, int]
    rows: Counter[tuple[str, str, str]]
    rate_limited: int
    hook_calls: int
    signatures_rejected: int

    def render(self, *, redis_url: str, prefix: str, duration_s: float) -> str:
        counts = self.counts
        lines = [
            f"retrier demo: {duration_s:g} s against a local Octopods simulator and resend hook",
            f"Redis {redactor.text(redis_url)}, keys under {prefix}: (deleted)",
            "",
            f"  sends listed                  {self.listed}",
            f"  failed                        {sum(self.rows.values())}",
            f"  resent                        {counts.get('resent', 0)}"
            f"   (hook calls: {self.hook_calls}, retried after 503: {counts.get('hook_retries', 0)})",
            f"  permanent and alerted         {counts.get('permanent', 0)}",
            f"  given up and alerted          {counts.get('gave_up', 0)}",
            f"  unclassified                  {counts.get('unclassified', 0)}"
            "   (no rule matched: defaults applied; add a rule for them)",
            f"  skipped as too old            {counts.get('expired', 0)}",
            f"  rate-limit waits              {self.rate_limited + counts.get('rate_limit_waits', 0)}"
            f"   (Octopods answered 429 {self.rate_limited} time(s); nothing was sent before the retry time)",
            f"  signatures rejected by hook   {self.signatures_rejected}",
            "",
            "  why, per rule:",
            f"    {'rule':34} {'action':10} {'outcome':10} messages",
        ]
        for (rule, action, state), number in sorted(self.rows.items()):
            lines.append(f"    {rule:34} {action:10} {state:10} {number}")
        return "\n".join(lines)


def _run(redis_url: str, prefix: str, rules: RuleSet, duration_s: float) -> Summary:
    api_key = "demo-" + secrets.token_hex(12)
    hook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    redactor.add_secrets([api_key, hook_secret])

    simulator = OctopodsSimulator(api_key, rate_limited_requests=frozenset({2}), retry_after_s=1)
    simulator.send_random(30)
    simulator.send(
        status="failed",
        reason="(#131016) Service temporarily unavailable.",
        sent_at=recent(60 * 30),
    )
    first_failures = [
        item["message_id"] for item in simulator.sent_messages() if item["status"] == "failed"
    ]
    hook = ResendHook(simulator, secret=hook_secret, fail_first=frozenset(first_failures[:4]))

    broker = build_broker(redis_url, prefix)
    store = Store(connect_redis(redis_url), prefix)
    hook_client = HookClient(hook.url, secret=hook_secret, timeout_s=5)
    declare_resend_actor(broker, Resender(store, hook_client))
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    client = OctopodsClient(simulator.url, api_key)
    fast = FastRules(rules)
    poller = Poller(
        client,
        store,
        lambda: fast,
        broker_enqueue(broker),
        max_message_age_s=86400,
        api_key=api_key,
        stager=RedisStager(broker),
    )

    stop = threading.Event()
    poll_thread = threading.Thread(
        target=poller.run_forever, args=(stop,), kwargs={"interval_s": 1.0}
    )
    worker.start()
    poll_thread.start()
    try:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and not stop.wait(1.0):
            simulator.send_random(3)
    finally:
        stop.set()
        poll_thread.join()
        with contextlib.suppress(QueueJoinTimeout):
            broker.join(QUEUE_NAME, timeout=10_000)
        worker.stop(timeout=10_000)
        client.close()
        hook_client.close()
        broker.close()
        hook.close()
        simulator.close()

    return Summary(
        listed=len(simulator.listed_ids),
        counts=store.counts(hours=2, now=time.time()),
        rows=_outcomes(store),
        rate_limited=simulator.rate_limited,
        hook_calls=len(hook.calls),
        signatures_rejected=hook.rejected_signatures,
    )


def _outcomes(store: Store) -> Counter[tuple[str, str, str]]:
    rows: Counter[tuple[str, str, str]] = Counter()
    for key in store.client.scan_iter(match=f"{store.keys.prefix}:msg:*", count=500):
        record = store.client.hgetall(key)
        fields = {_text(name): _text(value) for name, value in record.items()}
        rows[
            (fields.get("rule", "?"), fields.get("action", "retry"), fields.get("state", "?"))
        ] += 1
    return rows


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _delete_keys(redis_url: str, prefix: str) -> None:
    client = connect_redis(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as error:
        logger.warning("demo keys not deleted", extra={"prefix": prefix, "error": str(error)})
    finally:
        client.close()


@contextlib.contextmanager
def _redis(url: str) -> Iterator[str]:
    """Yield a Redis URL that answers: ``url``, or a private server started for the demo."""
    if _answers(url):
        yield url
        return

    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            f"nothing answers at REDIS_URL={redactor.text(url)!r} and redis-server is not installed: "
            "start Redis or point REDIS_URL at one"
        )
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="retrier-demo-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    private_url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _answers(private_url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise ConfigError(f"could not start a private redis-server on port {port}")
            time.sleep(0.05)
        logger.info("started a private redis-server", extra={"port": port})
        yield private_url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _answers(url: str) -> bool:
    client = connect_redis(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
