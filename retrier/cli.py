"""The ``retrier`` command line: poll, worker, rules, status, show, demo."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from retrier import __version__, alerts
from retrier.broker import build_broker, connect_redis
from retrier.errors import ConfigError, RulesError, StoreError
from retrier.logs import configure_logging
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.redact import redactor
from retrier.rules import Reason
from retrier.rulesfile import check_rules, load_rules
from retrier.settings import Settings, load_settings
from retrier.store import Store
from retrier.worker import run_worker

logger = logging.getLogger(__name__)

#: Exit status for a setting or rules file that stops start-up.
EXIT_CONFIG = 2


def install_stop_signals(stop: threading.Event) -> None:
    """Set ``stop`` on the first SIGTERM or SIGINT; log any later one and carry on stopping."""

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            logger.info("signal ignored: already stopping", extra={"signal": name})
            return
        logger.info("stop requested", extra={"signal": name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _start(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def cmd_poll(args: argparse.Namespace) -> int:
    settings = _start(args)
    settings.require("OCTOPODS_API_KEY")
    assert settings.octopods_api_key is not None
    rules = load_rules(args.rules or settings.rules_path)
    dry_run = args.dry_run or settings.dry_run

    alerts.init_sentry(settings)
    broker = build_broker(
        settings.redis_url, settings.redis_prefix, tls_insecure=settings.redis_tls_insecure
    )
    store = Store(
        connect_redis(settings.redis_url, tls_insecure=settings.redis_tls_insecure),
        settings.redis_prefix,
        dedup_ttl_s=settings.dedup_ttl_s,
    )
    api_key = settings.octopods_api_key.get_secret_value()
    client = OctopodsClient(settings.octopods_base_url, api_key)
    poller = Poller(
        client,
        store,
        lambda: rules,
        broker_enqueue(broker),
        max_message_age_s=settings.max_message_age_s,
        dry_run=dry_run,
        api_key=api_key,
    )
    logger.info(
        "rules loaded",
        extra={"path": str(rules.path), "rules": len(rules.rules), "digest": rules.digest},
    )

    try:
        if args.once:
            report = poller.run_cycle()
            for line in report.planned:
                print(line)
            return 1 if report.error else 0
        stop = threading.Event()
        install_stop_signals(stop)
        poller.run_forever(stop, interval_s=settings.poll_interval_s)
        return 0
    finally:
        client.close()
        broker.close()
        alerts.flush()


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _start(args)
    settings.require("RESEND_HOOK_URL")
    alerts.init_sentry(settings)
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        run_worker(settings, threads=args.threads, stop=stop)
    finally:
        alerts.flush()
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else _rules_path_from_env()
    errors = check_rules(path)
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    rules = load_rules(path)
    print(f"{path}: OK, {len(rules.rules)} rules, version {rules.version}, digest {rules.digest}")
    return 0


def cmd_rules_explain(args: argparse.Namespace) -> int:
    path = Path(args.rules) if args.rules else _rules_path_from_env()
    rules = load_rules(path)
    print(rules.explain(Reason(args.reason, args.code)))
    return 0


def _rules_path_from_env() -> Path:
    return load_settings().rules_path


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = Store(
        connect_redis(settings.redis_url, tls_insecure=settings.redis_tls_insecure),
        settings.redis_prefix,
    )
    now = time.time()
    until = store.backoff_until()
    last = store.get_last_poll()
    windows = {
        "last hour": store.counts(hours=1, now=now),
        "last day": store.counts(hours=24, now=now),
    }
    if args.json:
        status = {"backoff_until": until or None, "last_poll": last, **windows}
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0

    print(f"backoff: {'until ' + _iso(until) if until > now else 'none'}")
    print(f"last poll: {_iso(float(last['at'])) if last else 'never'}")
    for window, counts in windows.items():
        shown = ", ".join(f"{name}={value}" for name, value in sorted(counts.items()))
        print(f"{window}: {shown or 'nothing yet'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = Store(
        connect_redis(settings.redis_url, tls_insecure=settings.redis_tls_insecure),
        settings.redis_prefix,
    )
    record = store.get_record(args.message_id)
    if not record:
        print(
            f"no record of message {args.message_id} (never failed, not seen yet, or older than the dedup TTL)"
        )
        return 1
    for key in sorted(record):
        print(f"{key}: {record[key]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from retrier.demo import run_demo  # the simulator is only needed here

    return run_demo(duration_s=args.duration, quiet=args.quiet)


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrier",
        description="Resend failed WhatsApp messages sent through the Octopods API, by rules.",
    )
    parser.add_argument("--version", action="version", version=f"retrier {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    poll = commands.add_parser("poll", help="run the poller loop")
    poll.add_argument(
        "--once", action="store_true", help="run one cycle and exit (status 1 if it failed)"
    )
    poll.add_argument("--dry-run", action="store_true", help="classify and report; change nothing")
    poll.add_argument("--rules", help="rules file (default: RETRIER_RULES_PATH)")
    poll.set_defaults(handler=cmd_poll)

    worker = commands.add_parser("worker", help="run the Dramatiq worker for the resend actor")
    worker.add_argument(
        "--threads", type=_positive_int, default=8, help="worker threads (default: 8)"
    )
    worker.set_defaults(handler=cmd_worker)

    rules = commands.add_parser("rules", help="check or query the rules file")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = rules_commands.add_parser(
        "check", help="validate the file and run every rule's examples"
    )
    check.add_argument("path", nargs="?", help="rules file (default: RETRIER_RULES_PATH)")
    check.set_defaults(handler=cmd_rules_check)
    explain = rules_commands.add_parser(
        "explain", help="show which rule a failure reason gets, and why"
    )
    explain.add_argument("reason", help="the failure reason text")
    explain.add_argument("--code", type=int, help="a structured error code sent with the reason")
    explain.add_argument("--rules", help="rules file (default: RETRIER_RULES_PATH)")
    explain.set_defaults(handler=cmd_rules_explain)

    status = commands.add_parser("status", help="backoff, last poll and counts per outcome")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    show = commands.add_parser("show", help="what happened to one message")
    show.add_argument("message_id", type=_positive_int)
    show.set_defaults(handler=cmd_show)

    demo = commands.add_parser("demo", help="run the whole pipeline against local simulators")
    demo.add_argument("--duration", type=float, default=12.0, help="seconds to run (default: 12)")
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    demo.set_defaults(handler=cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except ConfigError as error:
        print(f"retrier: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except RulesError as error:
        print(f"retrier: invalid rules: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as error:
        print(
            f"retrier: {redactor.text(str(error))}: check REDIS_URL and that Redis is running",
            file=sys.stderr,
        )
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
