"""One logging pipeline: our structlog events and the stdlib loggers' records (our sources,
aiohttp, websockets) share the format, the level and the bound context."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from workers import logs
from workers.logs import configure

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
PAIR = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')


def logfmt(line: str) -> dict[str, str]:
    """A logfmt line as a dict; fails unless the whole line is key=value pairs."""
    pairs = {}
    position = 0
    while position < len(line):
        match = PAIR.match(line, position)
        assert match is not None, f"not logfmt at {position}: {line!r}"
        key, value = match.groups()
        pairs[key] = json.loads(value) if value.startswith('"') else value
        position = match.end()
    return pairs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    structlog.reset_defaults()


def emit_from_everywhere() -> None:
    structlog.get_logger("runtime").warning("ingester line", sources=2)
    logging.getLogger("ingest.sources.eventsub").warning(
        "eventsub subscription revoked: %s", "authorization_revoked"
    )
    logging.getLogger("websockets.server").info("connection rejected (%d %s)", 401, "Unauthorized")
    try:
        raise ValueError("bad handler")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")


EVERYWHERE = [
    ("warning", "runtime", "ingester line"),
    (
        "warning",
        "ingest.sources.eventsub",
        "eventsub subscription revoked: authorization_revoked",
    ),
    ("info", "websockets.server", "connection rejected (401 Unauthorized)"),
]
"""(level, logger, event) of the lines ``emit_from_everywhere`` writes below error."""


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_mode_renders_every_logger_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    emit_from_everywhere()
    records = [json.loads(line) for line in lines(capsys)]
    assert [(r["level"], r["logger"], r["event"]) for r in records] == [
        *EVERYWHERE,
        ("error", "aiohttp.server", "Error handling request"),
    ]
    assert records[0]["sources"] == 2
    assert "ValueError: bad handler" in records[3]["exception"]
    assert all(ISO.match(r["timestamp"]) for r in records)


def test_logfmt_mode_renders_every_logger_as_logfmt(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "logfmt")
    emit_from_everywhere()
    output = lines(capsys)
    records = [logfmt(line) for line in output[:3]]
    assert [(r["level"], r["logger"], r["event"]) for r in records] == EVERYWHERE
    assert all(ISO.match(r["timestamp"]) for r in records)
    assert list(records[1])[:3] == ["timestamp", "level", "event"]
    # The traceback is one logfmt value too (newlines escaped): one event, one line.
    assert len(output) == 4
    assert "ValueError: bad handler" in logfmt(output[3])["exception"]


@pytest.mark.parametrize(("level", "shown"), [("debug", True), ("info", True), ("warning", False)])
def test_stdlib_info_lines_follow_the_configured_level(
    capsys: pytest.CaptureFixture[str], level: str, shown: bool
) -> None:
    configure(level, "json")
    logging.getLogger("ingest.sources.eventsub").info("eventsub session reconnect requested")
    structlog.get_logger("runtime").info("source connected")
    events = [json.loads(line)["event"] for line in lines(capsys)]
    expected = ["eventsub session reconnect requested", "source connected"]
    assert events == (expected if shown else [])


def test_frame_loggers_stay_at_info_at_debug_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure("debug", "json")
    logging.getLogger("websockets.client").debug('< TEXT \'{"buyer": "0912..."}\' [40 bytes]')
    logging.getLogger("ingest.sources.mqtt").debug("a debug line of ours")
    assert [json.loads(line)["event"] for line in lines(capsys)] == ["a debug line of ours"]


def test_a_bound_source_reaches_stdlib_and_structlog_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", "logfmt")
    with structlog.contextvars.bound_contextvars(source="twitch"):
        logging.getLogger("ingest.sources.eventsub").warning("eventsub session ended: %s", "x")
        structlog.get_logger("runtime").info("source connected")
    logging.getLogger("aiohttp.access").warning("outside any source")
    records = [logfmt(line) for line in lines(capsys)]
    assert [r.get("source") for r in records] == ["twitch", "twitch", None]


def test_a_library_line_a_client_can_repeat_is_throttled_ours_are_not() -> None:
    now = [0.0]
    throttle = logs.LibraryThrottle(10.0, clock=lambda: now[0])

    def record(name: str, msg: object, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    closed = [throttle.filter(record("websockets.server", "connection closed")) for _ in range(5)]
    assert closed == [True, False, False, False, False]
    assert throttle.filter(record("websockets.server", "server listening on %s"))
    assert throttle.filter(record("websockets.server", "boom", logging.ERROR))
    assert all(throttle.filter(record("runtime", {"event": "x"})) for _ in range(3))
    assert all(throttle.filter(record("ingest.sources.mqtt", "x")) for _ in range(3))
    now[0] = 10.0
    assert throttle.filter(record("websockets.server", "connection closed"))
