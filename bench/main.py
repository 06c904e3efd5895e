"""Measure retrier against its targets; print one ``name: value`` line per figure.

The figures, the machine, the commands and the date also go to
docs/benchmarks.md. Every server this starts binds 127.0.0.1; Redis
(127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) must already run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import httpx
import redis
from ruamel.yaml import YAML

from bench import worker as worker_bench
from bench.counting import CountingConnection, counting_client
from retrier.broker import (
    RedisStager,
    build_broker,
    build_rabbitmq_broker,
    connect_redis,
    stager_for,
)
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.rules import Reason, RuleSet
from retrier.rulesfile import load_rules
from retrier.store import Store

REPO = Path(__file__).resolve().parent.parent
REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
API_KEY = "bench-key-" + uuid.uuid4().hex[:8]

#: Answer time of the "realistic" hook: one that sends a template through
#: Octopods before it answers takes tens of milliseconds or more.
SLOW_HOOK_MS = 50

TARGETS = {
    "poll_cycle_redis_round_trips": ("<=", 3),
    "poll_cycle_redis_round_trips_duplicates": ("<=", 3),
    "worker_vs_bare_dramatiq_ratio": (">=", 0.9),
    "classify_per_s": (">=", 200_000),
    "classify_worst_case_ms": ("<=", 50),
    "redis_bytes_per_tracked_message": ("<=", 300),
}


@contextmanager
def process(module: str, *args: str) -> Iterator[int]:
    """Run ``python -m module args`` and yield the port it prints first."""
    child = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert child.stdout is not None
        yield int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()


@contextmanager
def prefix_keys(client: redis.Redis) -> Iterator[str]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


def poll_cycles(rules: RuleSet, octopods_port: int, *, rabbitmq: bool) -> dict[str, float]:
    """Round trips to Redis and CPU of one poll cycle, by page make-up."""
    direct = connect_redis(REDIS_URL)
    figures: dict[str, float] = {}
    control = httpx.Client(base_url=f"http://127.0.0.1:{octopods_port}")
    with prefix_keys(direct) as prefix:
        store = Store(counting_client(*REDIS), prefix)
        broker = (
            build_rabbitmq_broker(RABBITMQ_URL) if rabbitmq else build_broker(REDIS_URL, prefix)
        )
        client = OctopodsClient(f"http://127.0.0.1:{octopods_port}", API_KEY)
        poller = Poller(
            client,
            store,
            lambda: rules,
            broker_enqueue(broker),
            max_message_age_s=86400,
            stager=stager_for(broker),
        )
        control.post("/page", params={"kind": "retry", "count": 100})
        poller.run_cycle()  # warm up: connections, scripts, caches

        trips: dict[str, list[int]] = {"retry": [], "mixed": [], "same": []}
        cpu_ms: list[float] = []
        for _ in range(5):
            for kind in ("retry", "mixed", "same"):
                control.post("/page", params={"kind": kind, "count": 100})
                CountingConnection.reset()
                started = time.process_time()
                report = poller.run_cycle()
                elapsed = time.process_time() - started
                trips[kind].append(CountingConnection.reset())
                if kind != "same":
                    cpu_ms.append(elapsed * 1000)
                if report.error:
                    raise RuntimeError(f"poll cycle failed: {report.error}")
        figures["poll_cycle_redis_round_trips"] = max(trips["retry"] + trips["mixed"])
        figures["poll_cycle_redis_round_trips_duplicates"] = max(trips["same"])
        figures["poll_cycle_cpu_ms"] = round(statistics.median(cpu_ms), 1)
        client.close()
        if rabbitmq:
            broker.declare_queue("resend")
            broker.flush_all()
        broker.close()
    control.close()
    return figures


def workers(hook_port: int, *, rabbitmq: bool, jobs: int) -> dict[str, float]:
    """Resends per second through the hook, and the ratio to a bare Dramatiq actor."""
    url = f"http://127.0.0.1:{hook_port}/resend"
    direct = connect_redis(REDIS_URL)
    with prefix_keys(direct) as prefix:
        store = Store(direct, prefix)

        def make_broker() -> dramatiq.Broker:
            if rabbitmq:
                return build_rabbitmq_broker(RABBITMQ_URL)
            return build_broker(REDIS_URL, f"{prefix}-{uuid.uuid4().hex[:4]}")

        bare, ours = [], []
        for _ in range(3):  # alternate, so that drift in the machine hits both alike
            bare.append(worker_bench.bare_dramatiq(make_broker, url, jobs))
            ours.append(worker_bench.retrier_actor(make_broker, store, url, jobs))
        memory = _record_bytes(direct, prefix)
    resends = statistics.median(ours)
    return {
        "worker_resends_per_s": round(resends),
        "bare_dramatiq_posts_per_s": round(statistics.median(bare)),
        "worker_vs_bare_dramatiq_ratio": round(resends / statistics.median(bare), 3),
        **({} if rabbitmq else {"redis_bytes_per_tracked_message": memory}),
    }


def _record_bytes(client: redis.Redis, prefix: str) -> float:
    keys = list(client.scan_iter(match=f"{prefix}:msg:*", count=1000))[:500]
    sizes = [client.memory_usage(key) or 0 for key in keys]
    return round(statistics.mean(sizes), 1) if sizes else 0.0


def classify(rules: RuleSet) -> dict[str, float]:
    """Classifications per second on a realistic mix, and the worst case on 100 KB texts."""
    reasons = _case_reasons(REPO / "config" / "rules-cases.yaml")
    rng = random.Random(7)
    # Real traffic repeats a few reasons, with ids or numbers in some of them.
    mix = [Reason(rng.choice(reasons)) for _ in range(2000)]
    mix += [Reason(f"{rng.choice(reasons)} (ref {rng.randrange(10**6)})") for _ in range(200)]
    rng.shuffle(mix)
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 3.0:
        for reason in mix:
            rules.classify(reason)
        count += len(mix)
    per_s = count / (time.perf_counter() - started)

    unique = [Reason(f"{rng.choice(reasons)} #{index}") for index in range(100_000)]
    started = time.perf_counter()
    for reason in unique:
        rules.classify(reason)
    uncached_per_s = len(unique) / (time.perf_counter() - started)

    adversarial = [
        "a" * 100_000,
        "(#1" * 33_000,
        "1-" * 50_000,
        "not a whatsapp " * 6_600,
        " ".join(str(rng.randrange(1000, 999_999)) for _ in range(14_000)),
        "+1 (555) 123-4567 " * 5_500,
    ]
    worst = 0.0
    for text in adversarial:
        started = time.perf_counter()
        rules.classify(Reason(text[:100_000]))
        worst = max(worst, (time.perf_counter() - started) * 1000)
    return {
        "classify_per_s": round(per_s),
        "classify_uncached_per_s": round(uncached_per_s),
        "classify_worst_case_ms": round(worst, 1),
    }


def _case_reasons(path: Path) -> list[str]:
    cases = YAML(typ="safe").load(path.read_text())
    return [str(case["reason"]) for case in cases if case.get("reason")]


def end_to_end(rules: RuleSet, samples: int) -> dict[str, float]:
    """Seconds from a failure appearing in the simulator to the hook call, at the default 60 s interval."""
    from retrier.simulator import OctopodsSimulator, ResendHook

    direct = connect_redis(REDIS_URL)
    latencies = []
    with prefix_keys(direct) as prefix:
        simulator = OctopodsSimulator(API_KEY)
        hook = ResendHook(simulator, secret=None)
        broker = build_broker(REDIS_URL, prefix)
        store = Store(direct, prefix)
        from retrier.actors import Resender, declare_resend_actor
        from retrier.hook import HookClient

        hook_client = HookClient(hook.url)
        declare_resend_actor(broker, Resender(store, hook_client))
        worker = dramatiq.Worker(broker, worker_threads=2)
        worker.start()
        client = OctopodsClient(simulator.url, API_KEY)
        poller = Poller(
            client,
            store,
            lambda: rules,
            broker_enqueue(broker),
            max_message_age_s=86400,
            stager=RedisStager(broker),
        )
        stop = threading.Event()
        loop = threading.Thread(
            target=poller.run_forever, args=(stop,), kwargs={"interval_s": 60.0}
        )
        loop.start()
        rng = random.Random(11)
        for _ in range(samples):
            time.sleep(rng.uniform(5, 55))
            message_id = simulator.send(status="failed", reason="(#131000) Something went wrong.")
            appeared = time.monotonic()
            while not any(call["message_id"] == message_id for call in list(hook.calls)):
                time.sleep(0.01)
            latencies.append(time.monotonic() - appeared)
        stop.set()
        loop.join()
        worker.stop()
        client.close()
        hook_client.close()
        broker.close()
        hook.close()
        simulator.close()
    return {
        "end_to_end_latency_s": round(statistics.mean(latencies), 1),
        "end_to_end_latency_max_s": round(max(latencies), 1),
        "poll_interval_s": 60,
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, target = TARGETS[name]
    held = value <= target if op == "<=" else value >= target
    return f"target {op} {target:g}: {'met' if held else 'MISSED'}"


def write_report(figures: dict[str, float], seconds: float, command: str) -> None:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}` in {seconds:.0f} s,",
        f"on {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}),",
        f"Python {platform.python_version()}, Redis and RabbitMQ on 127.0.0.1.",
        "Figures vary between runs by some percent; ratios are measured in the same run.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    for name, value in figures.items():
        lines.append(f"| `{name}` | {_number(value)} | {_verdict(name, value)} |")
    lines += ["", (REPO / "bench" / "NOTES.md").read_text().strip(), ""]
    (REPO / "docs" / "benchmarks.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="skip the end-to-end latency (2 minutes)"
    )
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs per worker run (default: 2000)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=open(os.devnull, "w"))  # noqa: SIM115
    started = time.perf_counter()
    rules = load_rules(REPO / "config" / "rules.yaml")
    figures: dict[str, float] = {}

    def show(new: dict[str, float]) -> None:
        for name, value in new.items():
            figures[name] = value
            print(f"{name}: {_number(value)}", flush=True)

    show(classify(rules))
    with process("bench.octopods", API_KEY) as octopods_port:
        show(poll_cycles(rules, octopods_port, rabbitmq=False))
        show(
            {
                f"rabbitmq_{name}": value
                for name, value in poll_cycles(rules, octopods_port, rabbitmq=True).items()
            }
        )
    with process("bench.hookserver") as hook_port:
        show(
            {
                "hook_capacity_per_s": round(
                    worker_bench.hook_capacity(f"http://127.0.0.1:{hook_port}/", 4000)
                )
            }
        )
        show(workers(hook_port, rabbitmq=False, jobs=args.jobs))
        show(
            {
                f"rabbitmq_{name}": value
                for name, value in workers(hook_port, rabbitmq=True, jobs=args.jobs).items()
            }
        )
    with process("bench.hookserver", str(SLOW_HOOK_MS)) as slow_port:
        slow = workers(slow_port, rabbitmq=False, jobs=args.jobs // 4)
        show({"worker_vs_bare_dramatiq_ratio_50ms_hook": slow["worker_vs_bare_dramatiq_ratio"]})
    if not args.quick:
        show(end_to_end(rules, samples=2))
    seconds = time.perf_counter() - started
    print(f"bench_seconds: {seconds:.0f}")
    if not args.quick:
        write_report(figures, seconds, "bench/run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
