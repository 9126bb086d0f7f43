"""``livestream-ingester``: run, check-config, demo, top, rules, report, session."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeAlias

from workers import config as config_module
from workers.logs import configure


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)``; SIGTERM and SIGINT set ``stop`` for a staged shutdown."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(wrapper())


def _load(path: str, require_secrets: bool = True) -> config_module.Config | None:
    try:
        return config_module.load(path, require_secrets=require_secrets)
    except config_module.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    configure(
        config.log.level, config.log.format, library_interval=config.log.rejection_interval_seconds
    )
    from ingest.catalog import CatalogError
    from ingest.sources.tls import TlsError
    from workers.runtime import Ingester, ListenError

    async def main(stop: asyncio.Event) -> int:
        try:
            ingester = Ingester(config, shutdown_deadline=args.shutdown_deadline)
        except config_module.ConfigError as exc:  # a tokens file changed since it was checked
            print(f"invalid configuration: {exc}", file=sys.stderr)
            return 2
        except TlsError as exc:  # the files changed since the config was validated
            print(f"error: tls: {exc}", file=sys.stderr)
            return 2
        except CatalogError as exc:  # changed since the config was checked
            print(f"invalid catalog: {exc}", file=sys.stderr)
            return 2
        # SIGHUP reads the secrets files and TLS certificates again (Ingester.reload), without a
        # restart, instead of ending us.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, ingester.reload)
        # What start-up built (modules, schemas, metrics: most of the heap) lives as long as
        # the process: frozen, the collector's full passes no longer rescan it each time. A
        # deep MQTT backlog, whose messages survive young collections while they wait for
        # their commit, triggered such passes often (docs/benchmarks.md, "MQTT").
        gc.collect()
        gc.freeze()
        try:
            await ingester.run(stop)
        except ListenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if ingester.refused is not None:
            return 2
        return 1 if ingester.unflushed else 0

    return run_until_signalled(main)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config, require_secrets=args.require_secrets)
    if config is None:
        return 2
    for problem in config_module.unset_secrets(config):
        print(f"warning: {problem} (run refuses to start without it)", file=sys.stderr)
    print(f"{args.config}: ok ({len(config.sources)} source(s))")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo.app import demo

    configure("warning" if args.quiet_logs else "info", "logfmt")
    return run_until_signalled(lambda stop: demo(args, stop))


def cmd_top(args: argparse.Namespace) -> int:
    from workers.top import top

    configure("warning", "logfmt")
    return run_until_signalled(lambda stop: top(args, stop))


def cmd_rules(args: argparse.Namespace) -> int:
    from workers.rules import RunbookBaseError, with_runbook_base

    try:
        with open(args.file, encoding="utf-8") as file:
            text = file.read()
        sys.stdout.write(with_runbook_base(text, args.runbook_base))
    except (OSError, RunbookBaseError) as exc:
        print(f"rules: {exc}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="livestream-ingester",
        description="Exact, deduplicated live-commerce totals in Redis, exposed to Prometheus.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_check_config, _add_demo, _add_top, _add_rules):
        add(sub)
    from workers.story_cli import add_report, add_session

    add_report(sub)
    add_session(sub)
    return top


Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns (its class is private in argparse)."""


def _add_run(sub: Subcommands) -> None:
    run = sub.add_parser("run", help="run every configured source, the committer and /metrics")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.add_argument(
        "--shutdown-deadline",
        type=float,
        default=10.0,
        help="seconds to flush buffered events after SIGTERM (default 10)",
    )
    run.set_defaults(func=cmd_run)


def _add_check_config(sub: Subcommands) -> None:
    check = sub.add_parser("check-config", help="validate a config file and report every error")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    check.add_argument(
        "--require-secrets",
        action="store_true",
        help="an unset secret (token_env, password_env, secret_env) is an error, as for run; "
        "by default it is a warning",
    )
    check.set_defaults(func=cmd_check_config)


def _add_demo(sub: Subcommands) -> None:
    demo = sub.add_parser(
        "demo", help="replay a synthetic Luc Ngan lychee sale through the ingester, live"
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=120.0,
        help="scenario seconds per real second (default 120: six hours in three minutes; "
        "0 = as fast as possible)",
    )
    demo.add_argument("--seed", type=int, default=2025, help="random seed of the sale")
    demo.add_argument(
        "--http", default="127.0.0.1:9464", help="host:port for /metrics (default %(default)s)"
    )
    demo.add_argument(
        "--config",
        default=None,
        help="ingester config (default: the demo.toml shipped in workers/demo/)",
    )
    demo.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop when the whole sale is counted; exit 1 unless totals equal the expected ones",
    )
    demo.add_argument(
        "--feed-only",
        metavar="HOST:PORT",
        default=None,
        help="only serve the sale's feed at ws://HOST:PORT/feed (for an ingester elsewhere, "
        "e.g. in docker compose), looping with fresh ids until stopped",
    )
    demo.add_argument(
        "--mqtt",
        metavar="URL",
        nargs="?",
        const="mqtt://127.0.0.1:1883",
        default=None,
        help="publish the orders at QoS 1 to this MQTT broker (default %(const)s) and consume "
        "them with the MQTT source; comments and viewers stay on the websocket feed",
    )
    demo.add_argument(
        "--report",
        metavar="FILE",
        default=None,
        help="where to write the sale's HTML report at the end (default: <temporary folder>/"
        "livestream-reports/<stream>.html); its path is printed",
    )
    demo.add_argument("--plain", action="store_true", help="print lines instead of a live view")
    demo.add_argument("--quiet-logs", action="store_true", help="log warnings and errors only")
    demo.set_defaults(func=cmd_demo)


def _add_top(sub: Subcommands) -> None:
    view = sub.add_parser(
        "top", help="a live terminal view of every stream's totals and the ingesters' health"
    )
    where = view.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="ingester config file: read Redis where it writes")
    where.add_argument(
        "--redis-url", help="Redis to read (default: REDIS_URL, else redis://127.0.0.1:6379/0)"
    )
    view.add_argument("--stream", help="show one stream (default: every stream in Redis)")
    view.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="an ingester's /metrics (URL or host:port) for source health; repeat per ingester",
    )
    view.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    view.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot and exit (rates over one interval; exit 1 if Redis fails)",
    )
    view.add_argument("--plain", action="store_true", help="print lines instead of a live view")
    view.set_defaults(func=cmd_top)


def _add_rules(sub: Subcommands) -> None:
    rules = sub.add_parser(
        "rules", help="print the Prometheus rules with runbook links under another base URL"
    )
    rules.add_argument(
        "--runbook-base",
        required=True,
        metavar="URL",
        help="absolute URL of the runbooks page (docs/operations.md as you host it)",
    )
    rules.add_argument(
        "file",
        nargs="?",
        default="config/prometheus/rules.yml",
        help="rule file to rewrite (default %(default)s)",
    )
    rules.set_defaults(func=cmd_rules)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
