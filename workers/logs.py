"""Structured logs (logfmt or JSON, one event per line) and a throttle against log floods.

One pipeline: our structlog events and every stdlib logger's records (``ingest.sources``,
aiohttp, websockets, aiomqtt) go through the same processors, renderer and level, on one handler
of the root logger. Values bound with ``structlog.contextvars`` (a source's ``source=``) reach
the lines of both.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR

FRAME_LOGGERS = ("websockets", "aiomqtt", "paho")
"""Libraries whose debug lines carry whole frames (buyers' names and phone numbers): they log at
info at most, even with ``level = "debug"``."""


OWN_LOGGERS = ("ingest", "workers", "bench")
"""Our stdlib module loggers: they throttle what a client can repeat themselves."""


class LibraryThrottle(logging.Filter):
    """Lets one line per library logger and message template through every ``interval``
    seconds below ERROR: a library's per-connection lines (websockets' "connection closed", a
    refused handshake's "HTTP response sent") must not let a client flood the log."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # a structlog event: ours
            return True
        if record.levelno >= logging.ERROR or record.name.split(".")[0] in OWN_LOGGERS:
            return True
        return self._throttle.decide((record.name, record.levelno, str(record.msg))).allowed


def configure(
    level: str = "info",
    fmt: str = "logfmt",
    stream: TextIO | None = None,
    library_interval: float = 10.0,
) -> None:
    """Send our events and the libraries' records to ``stream`` (stderr), one line each;
    the libraries' lines below ERROR at most once per template every ``library_interval``
    seconds (ours, structlog events or our modules' records, pass as they are)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(LibraryThrottle(library_interval))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    for name in FRAME_LOGGERS:
        logging.getLogger(name).setLevel(max(LEVELS[level], logging.INFO))


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What a :class:`Throttle` decided about one line."""

    allowed: bool
    """Whether to log the line."""
    suppressed: int = 0
    """When allowed, how many lines of its key were dropped since the last one logged."""


_DROP = Decision(allowed=False)


class Throttle:
    """Lets one log line per key through every ``interval`` seconds and counts the rest."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def decide(self, key: Hashable) -> Decision:
        """Whether the line of ``key`` is logged now; a dropped line is counted, and the count
        reported with the next one allowed."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return _DROP
        self._last[key] = now
        return Decision(allowed=True, suppressed=self._suppressed.pop(key, 0))
