"""Who may connect to a listener, and how often it may ask: connection caps and rate limits,
per listener and per client address. Pure bookkeeping (no sockets), with an injectable clock.

A client is its address: an IPv4 address, or the /64 network of an IPv6 address (a host holds a
whole /64, so one address per client would be no limit at all).

:class:`RateLimiter` keeps a token bucket for the listener and one per client. Only the
``max_clients`` clients seen last keep theirs (the one unseen longest is forgotten first), so
memory stays bounded however many addresses send; a forgotten client starts again with a full
bucket, and the listener's bucket still bounds what many addresses send together. A request
refused for its client's bucket takes nothing from the listener's, so one flooding client does
not use up the others' share.

No library fitted: ``limits`` keeps per-key windows whose count is bounded only by their expiry,
and ``aiolimiter`` is one bucket that makes callers wait, where a refusal must be at once (429
with ``Retry-After``) and per key.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import socket
import time
from collections.abc import Callable

LISTENER = "listener"
CLIENT = "client"
SCOPES = (LISTENER, CLIENT)
"""What a refusal is for: the listener's bound, or the client's share of it."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Requests (or websocket handshakes) a listener takes: ``per_second`` on average and
    ``burst`` at once, for all clients together and for each client."""

    per_second: float = 500.0
    burst: int = 1000
    client_per_second: float = 100.0
    client_burst: int = 300
    max_clients: int = 10_000
    """Clients whose bucket is remembered."""


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    scope: str
    """``listener`` or ``client``."""
    retry_after: int
    """Whole seconds until a request would be taken (RFC 9110 ``Retry-After``), at least 1."""


class TokenBucket:
    """``burst`` tokens, refilled at ``per_second``; a request takes one."""

    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, per_second: float, burst: int, now: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is there now); refills up to ``now``."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.per_second

    def take(self) -> None:
        self.tokens -= 1


class RateLimiter:
    """One listener's :class:`RateLimits`."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.listener = TokenBucket(limits.per_second, limits.burst, clock())
        self.clients: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def admit(self, client: str) -> Refusal | None:
        """Take a request from ``client`` (see :func:`client_key`), or say why not."""
        now = self.clock()
        bucket = self.clients.get(client)
        if bucket is None:
            limits = self.limits
            bucket = TokenBucket(limits.client_per_second, limits.client_burst, now)
            self.clients[client] = bucket
            if len(self.clients) > limits.max_clients:
                self.clients.popitem(last=False)
        else:
            self.clients.move_to_end(client)
        wait = bucket.wait(now)
        if wait:
            return Refusal(CLIENT, retry_after(wait))
        wait = self.listener.wait(now)
        if wait:
            return Refusal(LISTENER, retry_after(wait))
        bucket.take()
        self.listener.take()
        return None


def retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))


class ConnectionCaps:
    """Connections open at once: at most ``max_connections``, ``max_per_client`` of a client.
    Only clients with a connection open are tracked, so the table is bounded by the cap."""

    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.open = 0
        self.per_client: dict[str, int] = {}

    def admit(self, client: str) -> str | None:
        """Count a new connection of ``client``, or return the scope that refuses it."""
        held = self.per_client.get(client, 0)
        if held >= self.max_per_client:  # the client's own share first: it is what refuses it
            return CLIENT
        if self.open >= self.max_connections:
            return LISTENER
        self.open += 1
        self.per_client[client] = held + 1
        return None

    def release(self, client: str) -> None:
        """An admitted connection of ``client`` closed."""
        self.open -= 1
        held = self.per_client.pop(client) - 1
        if held:
            self.per_client[client] = held


def client_key(peername: object) -> str:
    """The client a socket's peer name (``get_extra_info("peername")``) belongs to. The kernel's
    own text of an address is trusted as it is (an IPv4 address is its own key)."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    if not isinstance(host, str):
        return "unknown"  # a Unix socket: one local client
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    except OSError:
        return host
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


_V4_MAPPED = bytes(10) + b"\xff\xff"
