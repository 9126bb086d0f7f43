"""A stream's live sessions: the commit script opens one with the first counted event; one ends
with ``session end``, with ``session start`` (the next one begins), or after the idle time.

Redis keeps the current session in ``li:{s}:session`` and the ended ones in
``li:{s}:sessions`` (workers/keys.py). An open session idle longer than the idle time is ended
in Redis by the next commit or command; until then :func:`view` shows it ended ("idle", at its
last counted event), so readers agree with what Redis will record.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from workers import keys
from workers.keys import StreamKeys

ENDED = "ended"
IDLE = "idle"
REPLACED = "replaced"
OPEN = "open"


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    n: int
    start: int
    """Seconds since the epoch (the commit clock)."""
    end: int | None
    """None while open."""
    how: str
    """OPEN, ENDED, IDLE or REPLACED."""
    first_minute: int | None
    """The event minutes it covered (epoch minutes); None before its first event."""
    last_minute: int | None

    @property
    def open(self) -> bool:
        return self.how == OPEN

    def seconds(self, now: float) -> int:
        """How long it has run (open) or ran."""
        return int((now if self.end is None else self.end) - self.start)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def parse_ended(n: int, text: str) -> Session | None:
    parts = text.split("|")
    if len(parts) != 5:
        return None
    start, end, how, first, last = parts
    start_s, end_s = _int(start), _int(end)
    if start_s is None or end_s is None:
        return None
    return Session(n, start_s, end_s, how, _int(first), _int(last))


def view(current: Mapping[str, str], now: float, idle_seconds: int) -> Session | None:
    """The current session as of ``now``: ended "idle" at its last counted event if it has
    been idle longer than ``idle_seconds``. None if the stream never had one."""
    n, start, last = _int(current.get("n", "")), _int(current.get("start", "")), None
    if n is None or start is None:
        return None
    last = _int(current.get("last", "")) or start
    first, last_minute = _int(current.get("first", "")), _int(current.get("last_minute", ""))
    if current.get("open") != "1":
        return None  # ended: its record is in li:{s}:sessions
    if now - last > idle_seconds:
        return Session(n, start, last, IDLE, first, last_minute)
    return Session(n, start, None, OPEN, first, last_minute)


class Sessions:
    """Reads and ends sessions; ``clock`` (seconds) is the time of the explicit commands and of
    :func:`view`."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        idle_seconds: int = 30 * 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._script = redis.register_script(keys.SESSION_SCRIPT)

    async def start(self, stream: str) -> int:
        """Open the stream's next session now; its number."""
        return await self._run(stream, "start")

    async def end(self, stream: str) -> int:
        """End the open session now; its number, 0 if none was open."""
        return await self._run(stream, "end")

    async def _run(self, stream: str, action: str) -> int:
        k = StreamKeys(stream)
        # With the default clock, Redis' own (as the commit script's on a single Redis).
        now: int | str = "" if self.clock is time.time else int(self.clock())
        reply = await self._script(
            keys=[k.session, k.sessions], args=[action, now, self.idle_seconds]
        )
        return int(reply)

    async def current(self, stream: str) -> Session | None:
        """The open session (or the one that has just gone idle), without the ended ones."""
        raw = await self.redis.hgetall(StreamKeys(stream).session)
        return view({_text(f): _text(v) for f, v in raw.items()}, self.clock(), self.idle_seconds)

    async def all(self, stream: str) -> list[Session]:
        """Every session of the stream, oldest first, the current one last."""
        k = StreamKeys(stream)
        ended_raw = await self.redis.hgetall(k.sessions)
        current_raw = await self.redis.hgetall(k.session)
        sessions = []
        for field, value in ended_raw.items():
            n = _int(_text(field))
            if n is not None and (s := parse_ended(n, _text(value))) is not None:
                sessions.append(s)
        current = view(
            {_text(f): _text(v) for f, v in current_raw.items()}, self.clock(), self.idle_seconds
        )
        if current is not None:
            sessions.append(current)
        return sorted(sessions, key=lambda s: s.n)

    async def get(self, stream: str, n: int | None = None) -> Session | None:
        """Session ``n``, or the latest."""
        sessions = await self.all(stream)
        if not sessions:
            return None
        if n is None:
            return sessions[-1]
        return next((s for s in sessions if s.n == n), None)
