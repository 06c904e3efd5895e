"""The ``retrier`` command line: poll, worker, rules, status, show, replay, resume, demo."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import dramatiq

from retrier import __version__, alerts
from retrier.actors import PAUSE_RECHECK_S
from retrier.broker import broker_for, check_redis, connect_redis, stager_for
from retrier.durations import parse_duration
from retrier.errors import BrokerError, ConfigError, RulesError, StoreError
from retrier.flood import AlertBudget
from retrier.lease import PollerLease
from retrier.logs import configure_logging
from retrier.octopods import OctopodsClient
from retrier.poller import Poller, broker_enqueue
from retrier.redact import redactor
from retrier.replay import replay
from retrier.rules import Reason, RuleSet
from retrier.rulesfile import check_rules, load_rules, run_cases
from retrier.rulesreload import RulesSource
from retrier.settings import Settings, load_settings
from retrier.status import gather_status, iso, render_message, render_status
from retrier.store import Store
from retrier.worker import run_worker

logger = logging.getLogger(__name__)

#: Exit status for a setting or rules file that stops start-up.
EXIT_CONFIG = 2

#: Seconds the poller waits for a cycle in progress after SIGTERM; Heroku
#: kills the dyno 30 s after the signal.
SHUTDOWN_GRACE_S = 20.0


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


def _store(settings: Settings) -> Store:
    client = connect_redis(settings.redis_url, tls_insecure=settings.redis_tls_insecure)
    return Store(client, settings.redis_prefix, dedup_ttl_s=settings.dedup_ttl_s)


def _broker(settings: Settings) -> dramatiq.Broker:
    return broker_for(settings)


def cmd_poll(args: argparse.Namespace) -> int:
    settings = _start(args)
    settings.require("OCTOPODS_API_KEY")
    assert settings.octopods_api_key is not None
    dry_run = args.dry_run or settings.dry_run

    alerts.init_sentry(settings)
    store = _store(settings)
    check_redis(store.client)
    try:
        rules = RulesSource(args.rules or settings.rules_path, store=None if dry_run else store)
    except RulesError as error:
        # With no last good rules to fall back on, the poller cannot start.
        alerts.alert_rules_unusable(error=str(error))
        alerts.flush()
        raise
    broker = _broker(settings)
    api_key = settings.octopods_api_key.get_secret_value()
    client = OctopodsClient(settings.octopods_base_url, api_key)
    poller = Poller(
        client,
        store,
        rules.current,
        broker_enqueue(broker),
        max_message_age_s=settings.max_message_age_s,
        dry_run=dry_run,
        api_key=api_key,
        budget=AlertBudget(store.client, settings.redis_prefix, limit=settings.alert_limit),
        monitor_slug=settings.monitor_slug,
        stager=stager_for(broker),
        min_interval_s=min(settings.min_poll_interval_s, settings.poll_interval_s),
    )
    logger.info(
        "rules loaded",
        extra={
            "path": str(rules.path),
            "rules": len(rules.rules.rules),
            "digest": rules.rules.digest,
        },
    )

    poller.interval_s = poller.current_interval_s = settings.poll_interval_s
    try:
        if args.once:
            report = poller.run_cycle()
            for line in report.planned:
                print(line)
            return 1 if report.error else 0
        poller.lease = PollerLease(
            store.client,
            settings.redis_prefix,
            holder=poller.poller_id,
            lease_s=settings.poller_lease_s,
        )
        stop = threading.Event()
        install_stop_signals(stop)
        # The loop runs in a thread of its own, so that a cycle stuck on a slow
        # Octopods cannot keep the process past Heroku's 30 s shutdown grace.
        loop = threading.Thread(
            target=poller.run_forever,
            args=(stop,),
            kwargs={"interval_s": settings.poll_interval_s},
            daemon=True,
        )
        loop.start()
        while loop.is_alive() and not stop.wait(1.0):
            pass
        loop.join(timeout=SHUTDOWN_GRACE_S)
        if loop.is_alive():
            logger.warning(
                "poll cycle abandoned at shutdown",
                extra={
                    "fix": "none needed: its unrecorded claims expire and a later cycle takes them up"
                },
            )
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
    path = Path(args.path) if args.path else load_settings().rules_path
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
    rules = load_rules(args.rules or load_settings().rules_path)
    print(redactor.text(rules.explain(Reason(args.reason, args.code))))
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules or load_settings().rules_path)
    try:
        report = run_cases(rules, args.cases)
    except RulesError as error:
        print(f"retrier: invalid cases file: {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(report.render(), file=sys.stdout if report.passed else sys.stderr)
    return 0 if report.passed else 1


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = _store(settings)
    status = gather_status(store, now=time.time(), rules=_rules_or_none(settings))
    if args.json:
        print(redactor.text(json.dumps(status, indent=2, sort_keys=True)))
    else:
        print(render_status(status))
    return 0


def _rules_or_none(settings: Settings) -> RuleSet | None:
    try:
        return load_rules(settings.rules_path)
    except RulesError:
        return None


def cmd_show(args: argparse.Namespace) -> int:
    text = render_message(_store(load_settings()), args.message_id)
    if text is None:
        print(
            f"no record of message {args.message_id}: it has not failed, has not been "
            "polled yet, or is older than RETRIER_DEDUP_TTL",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _start(args)
    now = time.time()
    since = args.since if args.since is not None else now - settings.dedup_ttl_s
    until = args.until if args.until is not None else now
    store = _store(settings)
    broker = _broker(settings)
    try:
        dry_run = args.dry_run or settings.dry_run
        report = replay(
            store,
            broker_enqueue(broker),
            since=since,
            until=until,
            rule=args.rule,
            dry_run=dry_run,
            now=now,
        )
    finally:
        broker.close()

    window = f"given up between {iso(since)} and {iso(until)}" + (
        f" by rule {args.rule}" if args.rule else ""
    )
    if dry_run:
        if not args.dry_run:
            print("dry run: RETRIER_DRY_RUN is set, so nothing is queued")
        print(f"would replay {len(report.found)} message(s) {window}:")
        for message_id, rule in report.found:
            print(f"  {message_id}  {rule}")
        return 0
    print(f"replayed {len(report.queued)} of {len(report.found)} message(s) {window}")
    for message_id, why in report.left:
        print(f"  left {message_id}: {why}")
    return 1 if report.left else 0


def cmd_resume(args: argparse.Namespace) -> int:
    settings = _start(args)
    lifted = _store(settings).resume()
    if not lifted:
        print("no pause in force: resends are running")
        return 0
    logger.warning(
        "resends resumed",
        extra={"rule": lifted.get("rule"), "message_id": lifted.get("message_id")},
    )
    print(
        f"resumed: resends had been paused since {iso(float(lifted.get('since', 0)))} by rule "
        f"{lifted.get('rule')} (message {lifted.get('message_id')}); held messages go out within "
        f"{PAUSE_RECHECK_S:g} s"
    )
    return 0


def parse_moment(text: str) -> float:
    """Read ``--since``/``--until`` as a Unix time: a duration ago (``2h``) or an ISO-8601 time."""
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected a duration ago such as 2h or 30m, or an ISO-8601 time "
            "such as 2026-04-24T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def cmd_demo(args: argparse.Namespace) -> int:
    from retrier.demo import run_demo  # the simulator is only needed here

    return run_demo(duration_s=args.duration, quiet=args.quiet)


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
    test = rules_commands.add_parser(
        "test", help="check that each reason of a cases file gets its expected rule and action"
    )
    test.add_argument("cases", help="the cases file, such as config/rules-cases.yaml")
    test.add_argument("--rules", help="rules file (default: RETRIER_RULES_PATH)")
    test.set_defaults(handler=cmd_rules_test)

    status = commands.add_parser(
        "status", help="backoff, pause, last poll, rules version, counts and unclassified reasons"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    show = commands.add_parser("show", help="what happened to one message")
    show.add_argument("message_id", type=_positive_int)
    show.set_defaults(handler=cmd_show)

    replay_parser = commands.add_parser(
        "replay", help="queue given-up resends again, once the cause is fixed"
    )
    replay_parser.add_argument(
        "--since",
        type=parse_moment,
        help="start of the window: a duration ago (2h) or an ISO-8601 time (default: RETRIER_DEDUP_TTL ago)",
    )
    replay_parser.add_argument(
        "--until", type=parse_moment, help="end of the window, in the same forms (default: now)"
    )
    replay_parser.add_argument("--rule", help="only messages of this rule")
    replay_parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    replay_parser.set_defaults(handler=cmd_replay)

    resume = commands.add_parser("resume", help="lift a pause set by an account-level failure")
    resume.set_defaults(handler=cmd_resume)

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
    except BrokerError as error:
        print(f"retrier: {redactor.text(str(error))}", file=sys.stderr)
        return 1
    except StoreError as error:
        cause = redactor.text(str(error)).rstrip(".")
        print(f"retrier: {cause}: check REDIS_URL and that Redis is running", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
