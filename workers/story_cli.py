"""``livestream-ingester session start|end`` and ``livestream-ingester report``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisClusterException, RedisError

from workers import config as config_module
from workers.report import FORMATS, ReportError, build, parse_offset
from workers.report_html import render
from workers.runtime import redis_client
from workers.sessions import Sessions
from workers.top import REDIS_TIMEOUT, redis_target

if TYPE_CHECKING:
    from workers.cli import Subcommands

READ_TIMEOUT = 30.0
"""Seconds a report may take to read, at most."""


def _story(args: argparse.Namespace) -> config_module.StoryConfig:
    """``[story]`` of ``-c``, or the defaults."""
    if args.config:
        return config_module.load(args.config, require_secrets=False).story
    return config_module.StoryConfig()


def _idle_seconds(args: argparse.Namespace) -> int:
    return _story(args).session_idle_minutes * 60


def write_atomically(path: Path, data: bytes) -> None:
    """Readers never see half a report: a temporary file in the folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _report(args: argparse.Namespace) -> int:
    url, cluster = redis_target(args)
    story = _story(args)
    offset = story.report_utc_offset_minutes
    if args.utc_offset is not None:
        offset = parse_offset(args.utc_offset)
    redis = redis_client(url, REDIS_TIMEOUT, cluster)
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            report = await build(
                redis,
                args.stream,
                args.session,
                idle_seconds=story.session_idle_minutes * 60,
                utc_offset=offset,
            )
    finally:
        await redis.aclose()
    data = render(report, args.format)
    if args.out:
        write_atomically(Path(args.out), data)
        print(args.out)
    else:
        sys.stdout.buffer.write(data)
    return 0


async def _session(args: argparse.Namespace) -> int:
    url, cluster = redis_target(args)
    redis = redis_client(url, REDIS_TIMEOUT, cluster)
    try:
        sessions = Sessions(redis, _idle_seconds(args))
        async with asyncio.timeout(READ_TIMEOUT):
            if args.action == "start":
                n = await sessions.start(args.stream)
                print(f"{args.stream}: session {n} started")
            else:
                n = await sessions.end(args.stream)
                print(f"{args.stream}: session {n} ended" if n else f"{args.stream}: none open")
    finally:
        await redis.aclose()
    return 0


def _run(main: Coroutine[Any, Any, int], label: str) -> int:
    try:
        result = asyncio.run(main)
    except config_module.ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    except (ReportError, ValueError) as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 1
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        print(f"{label}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return 1
    return result


def cmd_report(args: argparse.Namespace) -> int:
    return _run(_report(args), "report")


def cmd_session(args: argparse.Namespace) -> int:
    return _run(_session(args), "session")


def _where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="ingester config file: Redis and [story] from it")
    where.add_argument(
        "--redis-url", help="Redis to read (default: REDIS_URL, else redis://127.0.0.1:6379/0)"
    )


def add_report(sub: Subcommands) -> None:
    report = sub.add_parser("report", help="the story of a stream's session: html, json or md")
    _where(report)
    report.add_argument("--stream", required=True)
    report.add_argument("--session", type=int, default=None, help="number (default: latest)")
    report.add_argument("--format", choices=FORMATS, default="html")
    report.add_argument("--out", default=None, help="file to write (default: standard output)")
    report.add_argument(
        "--utc-offset",
        default=None,
        metavar="+HH:MM",
        help="time zone of the times shown (default: [story] report_utc_offset_minutes, or UTC)",
    )
    report.set_defaults(func=cmd_report)


def add_session(sub: Subcommands) -> None:
    session = sub.add_parser("session", help="start or end a stream's live session by hand")
    session.add_argument("action", choices=("start", "end"))
    _where(session)
    session.add_argument("--stream", required=True)
    session.set_defaults(func=cmd_session)
