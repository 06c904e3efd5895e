"""Fault injection: real retrier processes, real Redis and local servers, with one part failing.

Each test breaks one thing that retrier must survive. The faults are Redis
restarting empty, a hook that is down for a while, a worker or poller killed
outright, a job that Dramatiq lost, a 429 storm across worker processes, a
second poller, and Redis reached over TLS. Every process runs in a process group of its own, as on a
dyno, writes its output to a file, and that output goes to the secrets check.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from retrier.actors import Job, Resender, declare_resend_actor, enqueue_resend
from retrier.broker import build_broker, connect_redis
from retrier.hook import HookClient
from retrier.keys import Keys
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.rules import RuleSet
from retrier.simulator import OctopodsSimulator
from retrier.store import Store
from retrier.sweeper import sweep
from tests.conftest import (
    API_KEY,
    HOOK_SECRET,
    REDIS_URL,
    TEST_RULES,
    capture_process_output,
    wait_for,
)
from tests.servers import HTTPServer, Request, Response

pytestmark = pytest.mark.slow

#: A reason that TEST_RULES classifies as service-unavailable: retry, 3 attempts.
UNAVAILABLE = "(#131016) Service temporarily unavailable. Please retry later."

PHONE = "+15550004444"

#: Seconds the poller lease lasts in the tests that run the poller loop.
LEASE_S = 3


# -- processes ---------------------------------------------------------------


class Processes:
    """Starts commands in process groups of their own, with their output in a file.

    At teardown every process still running is killed with its group, and the
    output of every process goes to the secrets check.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(exist_ok=True)
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.directory / f"{len(self.started):02d}-{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.directory,  # no .env file here
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((name, process, log))
        return process

    def retrier(self, name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "retrier.cli", *args], env)

    def output(self, process: subprocess.Popen[bytes]) -> str:
        log = next(log for _, started, log in self.started if started is process)
        return log.read_text(errors="replace")

    def send_signal(self, process: subprocess.Popen[bytes], signum: int) -> None:
        # Only a process not yet reaped: its pid, and so its group id, cannot be reused.
        if process.poll() is None:
            os.killpg(process.pid, signum)

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
        """Send SIGTERM to the process group, as Heroku does, and return the exit status."""
        self.send_signal(process, signal.SIGTERM)
        return process.wait(timeout=timeout_s)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """Kill the process group outright, as a crashed dyno or the OOM killer would."""
        self.send_signal(process, signal.SIGKILL)
        process.wait(timeout=10)

    def close(self) -> None:
        for name, process, log in self.started:
            self.send_signal(process, signal.SIGKILL)
            process.wait(timeout=10)
            capture_process_output(name, log.read_text(errors="replace"))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path / "run")
    try:
        yield started
    finally:
        started.close()


def redis_server_argv(**options: str) -> list[str]:
    """Return a redis-server command line; each keyword is an option (``tls_port`` is --tls-port)."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    argv = [executable]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return argv


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateRedis:
    """A redis-server of one test on 127.0.0.1 that keeps nothing on disk."""

    def __init__(self, processes: Processes, directory: Path) -> None:
        self.processes = processes
        self.directory = directory
        self.directory.mkdir(exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = redis_server_argv(
            port=str(self.port),
            bind="127.0.0.1",
            save="",
            appendonly="no",
            dir=str(self.directory),
        )
        self.process = self.processes.start("redis-server", argv, {"PATH": os.environ["PATH"]})
        client = connect_redis(self.url, socket_connect_timeout=0.5)
        try:
            assert wait_for(lambda: _answers_ping(client), timeout_s=10)
        finally:
            client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.processes.kill(self.process)


def _answers_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def retrier_env(
    *,
    redis_url: str,
    prefix: str,
    octopods_url: str,
    hook_url: str,
    rules_path: Path,
    **extra: str,
) -> dict[str, str]:
    """Return the environment of a retrier process; every address in it is local."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": redis_url,
        "RETRIER_REDIS_PREFIX": prefix,
        "OCTOPODS_BASE_URL": octopods_url,
        "OCTOPODS_API_KEY": API_KEY,
        "RESEND_HOOK_URL": hook_url,
        "RESEND_HOOK_SECRET": HOOK_SECRET,
        "RETRIER_RULES_PATH": str(rules_path),
        "LOG_LEVEL": "INFO",
        **extra,
    }


def write_rules(tmp_path: Path, text: str = TEST_RULES) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


# -- Redis and hook helpers --------------------------------------------------


def state_of(store: Store, message_id: int) -> str:
    return store.get_record(message_id).get("state", "")


def calls_for(server: HTTPServer, message_id: int) -> list[Request]:
    return [request for request in server.requests if request.json()["message_id"] == message_id]


def queue_drained(client: redis.Redis, prefix: str) -> bool:
    """Return whether the resend queues are empty and no worker has an unacknowledged job."""
    namespace = Keys(prefix).broker_namespace
    if client.llen(f"{namespace}:resend") or client.llen(f"{namespace}:resend.DQ"):
        return False
    return not any(client.scard(key) for key in client.scan_iter(match=f"{namespace}:__acks__.*"))


def make_job(store: Store, message_id: int, **fields: str | int | float) -> Job:
    """Claim ``message_id`` and return the job a poller would enqueue for it."""
    token = uuid.uuid4().hex
    claim = store.claim([(message_id, token)], now=time.time())[0]
    assert claim.claimed
    values: dict[str, str | int | float] = {
        "message_id": message_id,
        "root": message_id,
        "token": token,
        "phone_number": PHONE,
        "sent_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "failure_reason": UNAVAILABLE,
        "rule": "service-unavailable",
        "max_attempts": 3,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 1.0,
        **fields,
    }
    return Job.from_dict(values)


@contextmanager
def resend_worker(
    store: Store, redis_url: str, prefix: str, hook_url: str, *, tls_insecure: bool = False
) -> Iterator[RedisBroker]:
    """Run the resend actor on an in-process Dramatiq worker; yield its broker."""
    broker = build_broker(redis_url, prefix, tls_insecure=tls_insecure)
    hook = HookClient(hook_url, secret=HOOK_SECRET, timeout_s=5)
    declare_resend_actor(broker, Resender(store, hook))
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        yield broker
    finally:
        worker.stop(timeout=10_000)
        hook.close()
        broker.close()


@pytest.fixture
def simulator() -> Iterator[OctopodsSimulator]:
    sim = OctopodsSimulator(API_KEY)
    try:
        yield sim
    finally:
        sim.close()


class IdempotentHook:
    """A resend hook that responds 200 to a new Idempotency-Key and 409 to one it has seen."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.statuses: dict[str, list[int]] = {}  # by Idempotency-Key
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key", "")
        with self._lock:
            self.seen[key] += 1
            status = 409 if self.seen[key] > 1 else 200
            self.statuses.setdefault(key, []).append(status)
        if status == 409:
            return Response(409, {"error": "already resent"})
        return Response(200, {})


# -- Redis stops and comes back ----------------------------------------------


@pytest.mark.timeout(180)
def test_redis_restart_processes_recover(
    tmp_path: Path,
    processes: Processes,
    simulator: OctopodsSimulator,
    http_server: Callable[..., HTTPServer],
    prefix: str,
) -> None:
    """Redis restarted empty: both processes carry on, and repeats get the same Idempotency-Key."""
    private = PrivateRedis(processes, tmp_path / "redis")
    private.start()
    idempotent = IdempotentHook()
    hook = http_server(idempotent)
    env = retrier_env(
        redis_url=private.url,
        prefix=prefix,
        octopods_url=simulator.url,
        hook_url=hook.url,
        rules_path=write_rules(tmp_path),
        RETRIER_POLL_INTERVAL="1",
        RETRIER_POLLER_LEASE=str(LEASE_S),
    )
    before = [simulator.send(status="failed", reason=UNAVAILABLE) for _ in range(3)]
    poller = processes.retrier("poll", "poll", env=env)
    worker = processes.retrier("worker", "worker", "--threads", "2", env=env)

    first_client = connect_redis(private.url)
    first_store = Store(first_client, prefix)
    try:
        assert wait_for(
            lambda: all(state_of(first_store, m) == "resent" for m in before), timeout_s=30
        )
    finally:
        first_client.close()

    private.kill()
    time.sleep(3)  # the outage itself
    poller_status_in_outage = poller.poll()
    worker_status_in_outage = worker.poll()
    private.start()  # the same port, and empty: nothing was saved to disk
    after = [simulator.send(status="failed", reason=UNAVAILABLE) for _ in range(2)]

    client = connect_redis(private.url)
    store = Store(client, prefix)
    try:
        everything_resent = wait_for(
            lambda: all(state_of(store, m) == "resent" for m in before + after), timeout_s=60
        )
    finally:
        client.close()

    assert poller_status_in_outage is None
    assert worker_status_in_outage is None
    assert everything_resent
    assert poller.poll() is None
    assert worker.poll() is None
    assert re.search(r"redis unavailable|unavailable: redis", processes.output(poller))
    for message_id in before:
        keys = [request.headers["idempotency-key"] for request in calls_for(hook, message_id)]
        assert keys == [str(message_id), str(message_id)]
        assert idempotent.statuses[str(message_id)] == [200, 409]
    for message_id in after:
        keys = [request.headers["idempotency-key"] for request in calls_for(hook, message_id)]
        assert keys == [str(message_id)]
        assert idempotent.statuses[str(message_id)] == [200]
    assert processes.stop(poller) == 0
    assert processes.stop(worker) == 0


# -- The hook is down for a while, then recovers -----------------------------

FLAKY_RULES = """\
version: 1
defaults:
  action: retry
  max_attempts: 1
  backoff: {initial: 1s, max: 2s}
rules:
  - name: flaky-send
    match: {contains: "service temporarily unavailable"}
    action: retry
    max_attempts: 3
    backoff: {initial: 1s, max: 2s}
    examples: ["Service temporarily unavailable"]
  - name: one-shot
    match: {code: 131000}
    action: retry
    max_attempts: 1
    examples: ["(#131000) Something went wrong"]
"""

MAX_ATTEMPTS = {"flaky-send": 3, "one-shot": 1}


class OutageHook:
    """A resend hook that responds 503 for ``down_s`` seconds from its first call, then 200."""

    def __init__(self, down_s: float) -> None:
        self.down_s = down_s
        self.down_until: float | None = None
        self.answers: list[tuple[int, int]] = []  # (message_id, status)
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        message_id = int(request.json()["message_id"])
        with self._lock:
            if self.down_until is None:
                self.down_until = request.received_at + self.down_s
            status = 503 if request.received_at < self.down_until else 200
            self.answers.append((message_id, status))
        return Response(status, {"error": "temporarily unavailable"} if status == 503 else {})

    def statuses(self, message_id: int) -> list[int]:
        with self._lock:
            return [status for mid, status in self.answers if mid == message_id]


@pytest.mark.timeout(120)
def test_hook_outage_then_recovery(
    tmp_path: Path,
    processes: Processes,
    simulator: OctopodsSimulator,
    http_server: Callable[..., HTTPServer],
    prefix: str,
    store: Store,
) -> None:
    """A hook down for 4 s: calls stay within policy, replay takes up the rest, each resent once."""
    outage = OutageHook(down_s=4.0)
    hook = http_server(outage)
    env = retrier_env(
        redis_url=REDIS_URL,
        prefix=prefix,
        octopods_url=simulator.url,
        hook_url=hook.url,
        rules_path=write_rules(tmp_path, FLAKY_RULES),
        RETRIER_POLL_INTERVAL="1",
        RETRIER_POLLER_LEASE=str(LEASE_S),
    )
    rule_of: dict[int, str] = {}
    for _ in range(3):
        rule_of[simulator.send(status="failed", reason=UNAVAILABLE)] = "flaky-send"
    for _ in range(2):
        rule_of[simulator.send(status="failed", reason="(#131000) Something went wrong")] = (
            "one-shot"
        )
    worker = processes.retrier("worker", "worker", "--threads", "4", env=env)
    poller = processes.retrier("poll", "poll", env=env)

    # A second batch fails while the hook is down, 2 s into the outage.
    assert wait_for(lambda: outage.down_until is not None, timeout_s=30)
    assert outage.down_until is not None
    time.sleep(max(outage.down_until - 2.0 - time.time(), 0.0))
    for _ in range(2):
        rule_of[simulator.send(status="failed", reason=UNAVAILABLE)] = "flaky-send"
    rule_of[simulator.send(status="failed", reason="(#131000) Something went wrong")] = "one-shot"

    def settled() -> bool:
        return all(state_of(store, m) in ("resent", "gave_up") for m in rule_of)

    assert wait_for(settled, timeout_s=40)
    states = {m: state_of(store, m) for m in rule_of}
    statuses = {m: outage.statuses(m) for m in rule_of}
    given_up = sorted(m for m, state in states.items() if state == "gave_up")

    assert given_up != []
    for message_id, rule in rule_of.items():
        assert len(statuses[message_id]) <= MAX_ATTEMPTS[rule]
        assert statuses[message_id].count(200) <= 1
        if states[message_id] == "resent":
            assert statuses[message_id][-1] == 200
        else:
            assert statuses[message_id] == [503] * MAX_ATTEMPTS[rule]

    result = subprocess.run(
        [sys.executable, "-m", "retrier.cli", "replay"],
        env=env,
        cwd=processes.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    capture_process_output("replay", result.stdout + result.stderr)
    assert result.returncode == 0
    assert f"replayed {len(given_up)} of {len(given_up)} message(s)" in result.stdout

    assert wait_for(lambda: all(state_of(store, m) == "resent" for m in rule_of), timeout_s=30)
    assert wait_for(lambda: queue_drained(store.client, prefix), timeout_s=10)
    for message_id in rule_of:
        assert outage.statuses(message_id).count(200) == 1
    for message_id in given_up:
        assert outage.statuses(message_id)[len(statuses[message_id]) :] == [200]
    assert processes.stop(poller) == 0
    assert processes.stop(worker) == 0


# -- SIGKILL to a worker in the middle of a hook call ------------------------


@pytest.mark.timeout(240)
def test_killed_worker_job_taken_over(
    tmp_path: Path,
    processes: Processes,
    http_server: Callable[..., HTTPServer],
    prefix: str,
    store: Store,
) -> None:
    """A worker killed mid-call: a second worker resends the message within two minutes."""
    hook = http_server()
    hook.script([Response(200, {}, delay_s=30.0), Response(200, {})])
    broker = build_broker(REDIS_URL, prefix)
    try:
        enqueue_resend(broker, make_job(store, 931))
    finally:
        broker.close()
    env = retrier_env(
        redis_url=REDIS_URL,
        prefix=prefix,
        octopods_url=hook.url,
        hook_url=hook.url,
        rules_path=write_rules(tmp_path),
    )
    first = processes.retrier("worker-killed", "worker", "--threads", "1", env=env)
    assert wait_for(lambda: len(hook.requests) == 1, timeout_s=30)

    killed_at = time.time()
    processes.kill(first)
    second = processes.retrier("worker-second", "worker", "--threads", "1", env=env)
    took_over = wait_for(lambda: len(hook.requests) == 2, timeout_s=130)
    resent = wait_for(lambda: state_of(store, 931) == "resent", timeout_s=10)

    assert took_over
    assert hook.requests[1].received_at - killed_at < 120
    assert resent
    assert hook.requests[1].headers["idempotency-key"] == "931"
    assert processes.stop(second) == 0


# -- Nothing accepted is dropped: the sweeper --------------------------------


def make_poller(
    simulator: OctopodsSimulator,
    store: Store,
    rules: RuleSet,
    enqueue: Callable[[Job, float], None],
) -> tuple[Poller, OctopodsClient]:
    client = OctopodsClient(simulator.url, API_KEY, timeout_s=5)
    poller = Poller(client, store, lambda: rules, enqueue, max_message_age_s=86400, api_key=API_KEY)
    return poller, client


def test_sweeper_requeues_lost_job(
    simulator: OctopodsSimulator,
    http_server: Callable[..., HTTPServer],
    store: Store,
    rules: RuleSet,
    prefix: str,
) -> None:
    """A queued message whose job was lost is swept by the next poller cycle and resent once."""
    hook = http_server()
    failed = simulator.send(status="failed", reason=UNAVAILABLE, phone_number=PHONE)
    lost: list[Job] = []
    poller, client = make_poller(simulator, store, rules, lambda job, delay_s: lost.append(job))
    report = poller.run_cycle()
    queued_state = state_of(store, failed)
    store.client.zadd(store.keys.pending, {str(failed): time.time() - 1})

    stop = threading.Event()
    with resend_worker(store, REDIS_URL, prefix, hook.url) as broker:
        poller.enqueue = broker_enqueue(broker)
        loop = threading.Thread(target=poller.run_forever, args=(stop,), kwargs={"interval_s": 60})
        loop.start()
        try:
            resent = wait_for(lambda: state_of(store, failed) == "resent")
            drained = wait_for(lambda: queue_drained(store.client, prefix))
        finally:
            stop.set()
            loop.join(timeout=10)
            client.close()

    assert report.queued == 1
    assert len(lost) == 1
    assert queued_state == "queued"
    assert resent
    assert drained
    assert store.get_record(failed)["swept"] == "1"
    assert len(calls_for(hook, failed)) == 1


def test_sweep_of_live_job_calls_hook_once(
    simulator: OctopodsSimulator,
    http_server: Callable[..., HTTPServer],
    store: Store,
    rules: RuleSet,
    prefix: str,
) -> None:
    """A message swept while its first job is still queued is resent once: that job is stale."""
    hook = http_server()
    failed = simulator.send(status="failed", reason=UNAVAILABLE, phone_number=PHONE)
    broker = build_broker(REDIS_URL, prefix)
    poller, client = make_poller(simulator, store, rules, broker_enqueue(broker))
    try:
        poller.run_cycle()
        store.client.zadd(store.keys.pending, {str(failed): time.time() - 1})
        swept = sweep(store, rules.policy_for, poller.enqueue, now=time.time())
    finally:
        client.close()
        broker.close()
    jobs_waiting = store.client.llen(f"{Keys(prefix).broker_namespace}:resend")

    with resend_worker(store, REDIS_URL, prefix, hook.url):
        resent = wait_for(lambda: state_of(store, failed) == "resent")
        drained = wait_for(lambda: queue_drained(store.client, prefix))

    assert swept == [failed]
    assert jobs_waiting == 2
    assert resent
    assert drained
    assert len(calls_for(hook, failed)) == 1


# -- SIGKILL to the poller between claim and enqueue -------------------------

#: Seconds the claims of the poller killed between claim and enqueue live.
SHORT_CLAIM_TTL_S = 3

# Python binds the default of Store(claim_ttl_s=...) when it defines the method,
# so patching retrier.store.DEFAULT_CLAIM_TTL_S changes nothing. The wrapper
# replaces retrier.cli._store instead, where the CLI builds its Store.
STUCK_POLLER = f"""\
import sys
import threading

import retrier.cli
import retrier.triage
from retrier.broker import connect_redis
from retrier.store import Store


def short_claims(settings):
    client = connect_redis(settings.redis_url, tls_insecure=settings.redis_tls_insecure)
    return Store(
        client,
        settings.redis_prefix,
        dedup_ttl_s=settings.dedup_ttl_s,
        claim_ttl_s={SHORT_CLAIM_TTL_S},
    )


def stuck(*args, **kwargs):
    print("claimed: blocking before the enqueue", flush=True)
    threading.Event().wait()


retrier.cli._store = short_claims
retrier.triage.Triage.act = stuck
sys.exit(retrier.cli.main(["poll", "--once"]))
"""


def run_poll_once(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "retrier.cli", "poll", "--once"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    capture_process_output("poll --once", result.stdout + result.stderr)
    return result


def test_poller_killed_after_claim(
    tmp_path: Path,
    processes: Processes,
    simulator: OctopodsSimulator,
    http_server: Callable[..., HTTPServer],
    prefix: str,
    store: Store,
) -> None:
    """A poller killed between claim and enqueue: a later poll queues the message, resent once."""
    hook = http_server()
    failed = simulator.send(status="failed", reason=UNAVAILABLE, phone_number=PHONE)
    env = retrier_env(
        redis_url=REDIS_URL,
        prefix=prefix,
        octopods_url=simulator.url,
        hook_url=hook.url,
        rules_path=write_rules(tmp_path),
    )
    wrapper = tmp_path / "stuck_poller.py"
    wrapper.write_text(STUCK_POLLER)
    stuck = processes.start("stuck-poller", [sys.executable, str(wrapper)], env)

    # The wrapper prints once it has claimed and is about to enqueue.
    assert wait_for(lambda: "blocking before the enqueue" in processes.output(stuck), timeout_s=30)
    state_when_killed = state_of(store, failed)
    processes.kill(stuck)
    while_claimed = run_poll_once(env, processes.directory)
    state_while_claimed = state_of(store, failed)
    claim_expired = wait_for(
        lambda: not store.client.exists(store.keys.message(failed)),
        timeout_s=SHORT_CLAIM_TTL_S + 5,
    )
    later = run_poll_once(env, processes.directory)
    state_after_poll = state_of(store, failed)
    with resend_worker(store, REDIS_URL, prefix, hook.url):
        resent = wait_for(lambda: state_of(store, failed) == "resent")
        drained = wait_for(lambda: queue_drained(store.client, prefix))

    assert state_when_killed == "claimed"
    assert while_claimed.returncode == 0
    assert "duplicates=1" in while_claimed.stdout
    assert state_while_claimed == "claimed"
    assert claim_expired
    assert later.returncode == 0
    assert state_after_poll == "queued"
    assert resent
    assert drained
    assert len(calls_for(hook, failed)) == 1


# -- A 429 storm across several worker processes -----------------------------


@dataclass(frozen=True)
class HookCall:
    message_id: int
    began_at: float  # the worker's clock when begin_attempt let the call go ahead
    received_at: float
    status: int


class StormHook:
    """A resend hook that responds 429 with Retry-After: 2 to its first ``storm`` calls, then 200.

    On each call it reads when the attempt began from the message's record,
    which begin_attempt stamps (``updated_at``) just before the worker posts.
    Records keep whole seconds, rounded down: a call that began in the same
    second as a retry time was stored then goes unchecked, but a correct one is
    never flagged.
    """

    def __init__(self, store: Store, storm: int) -> None:
        self.store = store
        self.storm = storm
        self.calls: list[HookCall] = []
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        message_id = int(request.json()["message_id"])
        began_at = float(self.store.get_record(message_id)["updated_at"])
        with self._lock:
            limited = sum(call.status == 429 for call in self.calls) < self.storm
            status = 429 if limited else 200
            self.calls.append(HookCall(message_id, began_at, request.received_at, status))
        if limited:
            return Response(429, {"error": "too many requests"}, {"Retry-After": "2"})
        return Response(200, {}, delay_s=0.05)


class BackoffWatch:
    """Polls the shared backoff and notes each new retry time with a moment it was already stored."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[tuple[float, float]] = []  # (stored by then, retry time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackoffWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last = 0.0
        while not self._stop.wait(0.002):
            until = self.store.backoff_until()
            if until != last:
                self.seen.append((time.time(), until))
                last = until


@pytest.mark.timeout(120)
def test_rate_limit_storm_three_workers(
    tmp_path: Path,
    processes: Processes,
    http_server: Callable[..., HTTPServer],
    prefix: str,
    store: Store,
) -> None:
    """A 429 storm across three workers: no call starts before the stored retry time passes."""
    storm = StormHook(store, storm=5)
    hook = http_server(storm)
    env = retrier_env(
        redis_url=REDIS_URL,
        prefix=prefix,
        octopods_url=hook.url,
        hook_url=hook.url,
        rules_path=write_rules(tmp_path),
    )
    workers = [
        processes.retrier(f"worker-{number}", "worker", "--threads", "4", env=env)
        for number in range(3)
    ]
    assert wait_for(
        lambda: all('event="worker started"' in processes.output(w) for w in workers),
        timeout_s=30,
    )
    message_ids = list(range(6001, 6031))
    jobs = [
        make_job(store, message_id, phone_number=f"+1555000{message_id:04d}")
        for message_id in message_ids
    ]

    # Jobs keep arriving through the storm, so that every retry time stored has
    # calls that would break it if a worker ignored it.
    broker = build_broker(REDIS_URL, prefix)
    with BackoffWatch(store) as watch:
        try:
            for job in jobs:
                enqueue_resend(broker, job)
                time.sleep(0.1)
        finally:
            broker.close()
        resent = wait_for(
            lambda: all(state_of(store, m) == "resent" for m in message_ids), timeout_s=60
        )
    exit_statuses = [processes.stop(worker) for worker in workers]

    early = [
        (call.message_id, round(until - call.received_at, 3))
        for stored_at, until in watch.seen
        for call in storm.calls
        if call.began_at >= stored_at and call.received_at < until
    ]
    first_limited = min(call.received_at for call in storm.calls if call.status == 429)
    assert resent
    assert sum(call.status == 429 for call in storm.calls) == 5
    assert watch.seen != []
    assert max(until for _, until in watch.seen) >= first_limited + 1.5
    assert early == []
    for message_id in message_ids:
        assert [c.status for c in storm.calls if c.message_id == message_id].count(200) == 1
    assert exit_statuses == [0, 0, 0]


# -- One active poller: the lease --------------------------------------------

#: Seconds over which the listing rate of two pollers is measured.
RATE_WINDOW_S = 6


@pytest.mark.timeout(120)
def test_lease_one_active_poller(
    tmp_path: Path,
    processes: Processes,
    simulator: OctopodsSimulator,
    http_server: Callable[..., HTTPServer],
    prefix: str,
    store: Store,
) -> None:
    """Two pollers list at the rate of one, and the standby takes over soon after a kill."""
    hook = http_server()
    env = retrier_env(
        redis_url=REDIS_URL,
        prefix=prefix,
        octopods_url=simulator.url,
        hook_url=hook.url,
        rules_path=write_rules(tmp_path),
        RETRIER_POLL_INTERVAL="1",
        RETRIER_POLLER_LEASE=str(LEASE_S),
    )
    pollers = [processes.retrier(f"poll-{number}", "poll", env=env) for number in range(2)]
    assert wait_for(
        lambda: all('event="poller started"' in processes.output(p) for p in pollers),
        timeout_s=30,
    )
    assert wait_for(lambda: simulator.requests >= 2, timeout_s=10)

    counted_from = simulator.requests
    time.sleep(RATE_WINDOW_S)  # a rate needs a fixed window
    listed = simulator.requests - counted_from

    holder = store.lease_holder()
    assert holder is not None
    holder_pid = int(holder.rsplit(":", 1)[1])
    active = next(p for p in pollers if p.pid == holder_pid)
    standby = next(p for p in pollers if p.pid != holder_pid)
    killed_at = time.monotonic()
    processes.kill(active)
    listed_before_takeover = simulator.requests
    took_over = wait_for(lambda: simulator.requests > listed_before_takeover, timeout_s=15)
    takeover_s = time.monotonic() - killed_at

    assert listed <= RATE_WINDOW_S + 2
    assert listed >= RATE_WINDOW_S - 2
    assert took_over
    # The lease runs out at most LEASE_S after the kill, and the standby tries to
    # take it every LEASE_S / 3. One more second covers process scheduling.
    assert takeover_s < LEASE_S + LEASE_S / 3 + 1
    assert store.lease_holder() == f"{holder.rsplit(':', 1)[0]}:{standby.pid}"
    assert processes.stop(standby) == 0


# -- TLS ---------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return their paths."""
    certificate = directory / "redis.crt"
    key = directory / "redis.key"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    options = "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    result = subprocess.run(
        [
            openssl,
            *options.split(),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    capture_process_output("openssl", result.stdout + result.stderr)
    assert result.returncode == 0
    return certificate, key


@pytest.mark.timeout(120)
def test_tls_redis_connections(
    tmp_path: Path,
    processes: Processes,
    http_server: Callable[..., HTTPServer],
    prefix: str,
) -> None:
    """rediss:// with a self-signed certificate: rejected by default, works when insecure."""
    certificate, key = make_certificate(tmp_path)
    port = free_port()
    data = tmp_path / "redis-tls"
    data.mkdir()
    argv = redis_server_argv(
        port="0",
        tls_port=str(port),
        bind="127.0.0.1",
        tls_cert_file=str(certificate),
        tls_key_file=str(key),
        tls_ca_cert_file=str(certificate),
        tls_auth_clients="no",
        save="",
        appendonly="no",
        dir=str(data),
    )
    server = processes.start("redis-server-tls", argv, {"PATH": os.environ["PATH"]})
    url = f"rediss://127.0.0.1:{port}/0"
    insecure = connect_redis(url, tls_insecure=True, socket_connect_timeout=0.5)
    verified = connect_redis(url)
    try:
        up = wait_for(lambda: _answers_ping(insecure) or server.poll() is not None, timeout_s=10)
        if server.poll() is not None and "tls" in processes.output(server).lower():
            pytest.skip("this redis-server was built without TLS support")
        assert up
        assert server.poll() is None
        with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
            verified.ping()
        assert insecure.ping()

        hook = http_server()
        env = retrier_env(
            redis_url=url,
            prefix=prefix,
            octopods_url=hook.url,
            hook_url=hook.url,
            rules_path=write_rules(tmp_path),
            REDIS_TLS_INSECURE="true",
        )
        status = subprocess.run(
            [sys.executable, "-m", "retrier.cli", "status"],
            env=env,
            cwd=processes.directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
        capture_process_output("status", status.stdout + status.stderr)

        store = Store(insecure, prefix)
        job = make_job(store, 981)
        with resend_worker(store, url, prefix, hook.url, tls_insecure=True) as broker:
            enqueue_resend(broker, job)
            resent = wait_for(lambda: state_of(store, 981) == "resent")
    finally:
        insecure.close()
        verified.close()

    assert status.returncode == 0
    assert resent
    assert len(calls_for(hook, 981)) == 1
