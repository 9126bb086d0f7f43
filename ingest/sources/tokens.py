"""Push tokens: which producers may push to a ``websocket-server`` source, and a file of them
that is read again while the source runs (so a token is rolled out or revoked without a restart).
The file format and its watch serve the Shopify secrets file too (``ingest.sources.webhook``).

A tokens file has one producer a line, ``<producer> <token>``; blank lines and lines starting
with ``#`` are skipped. Every line is checked and every problem reported at once (line numbers,
never the token): a producer name is a bounded label (``[a-z0-9][a-z0-9_.-]{0,63}``), a token is
16 to 4096 visible ASCII characters (it travels in an HTTP header), and no name nor token comes
twice; at most :data:`MAX_TOKENS` lines.

An offered token is compared with every token in use, always all of them, in constant time:
both sides are hashed first (SHA-256), so neither the position of a match nor a token's length
shows in the time taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Generic, TypeVar

log = logging.getLogger(__name__)

PRODUCER_PATTERN: Final = r"[a-z0-9][a-z0-9_.-]{0,63}"
ENV_PRODUCER: Final = "env"
"""The producer name of the single token a source takes from ``token_env``."""
MIN_TOKEN_BYTES: Final = 16
MAX_TOKEN_BYTES: Final = 4096
MAX_TOKENS: Final = 100
"""Lines of a tokens file: the producer label stays bounded."""
MAX_FILE_BYTES: Final = 1024 * 1024

T = TypeVar("T")

_PRODUCER = re.compile(PRODUCER_PATTERN)
_TOKEN = re.compile(rf"[\x21-\x7e]{{{MIN_TOKEN_BYTES},{MAX_TOKEN_BYTES}}}")


@dataclasses.dataclass(frozen=True, slots=True)
class Credential:
    """One producer's token (kept only as its digest)."""

    producer: str
    digest: bytes = dataclasses.field(repr=False)

    @classmethod
    def of(cls, producer: str, token: str) -> Credential:
        return cls(producer, _digest(token.encode("utf-8", "surrogateescape")))


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokensError(Exception):
    """A tokens file that cannot be used; ``errors`` lists every problem ("line 3: ...")."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class Tokens:
    """The credentials a source accepts now."""

    def __init__(self, credentials: tuple[Credential, ...]) -> None:
        self.credentials = credentials
        self.digests = frozenset(credential.digest for credential in credentials)

    def __len__(self) -> int:
        return len(self.credentials)

    def match(self, offered: bytes) -> Credential | None:
        """The credential whose token is ``offered``, comparing with every one (no early exit)."""
        digest = _digest(offered)
        found = None
        for credential in self.credentials:
            if hmac.compare_digest(digest, credential.digest):
                found = credential
        return found


def parse_pairs(text: str, name: str = "producer", value: str = "token") -> dict[str, str]:
    """The ``<name> <value>`` lines of a secrets file's text, checked (the nouns name the
    columns in the messages); TokensError with every problem."""
    pairs, _, errors = checked_pairs(text, name, value)
    if errors:
        raise TokensError(errors)
    return pairs


def checked_pairs(
    text: str, name: str, value: str
) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """The good lines' pairs, the line of every name written, and every problem."""
    errors: list[str] = []
    pairs: dict[str, str] = {}
    names: dict[str, int] = {}
    values: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            errors.append(f"line {number}: expected '<{name}> <{value}>'")
            continue
        key, secret = fields
        problems = [
            f"{name} name must match {PRODUCER_PATTERN}" if not _PRODUCER.fullmatch(key) else "",
            "" if _TOKEN.fullmatch(secret) else _value_problem(secret, value),
            f"{name} {key!r} is already on line {names[key]}" if key in names else "",
            f"the same {value} is already on line {values[secret]}" if secret in values else "",
        ]
        problems = [problem for problem in problems if problem]
        errors.extend(f"line {number}: {problem}" for problem in problems)
        names.setdefault(key, number)
        values.setdefault(secret, number)
        if not problems:
            pairs[key] = secret
    if len(names) > MAX_TOKENS:
        errors.append(f"more than {MAX_TOKENS} {name}s")
    return pairs, names, errors


def _value_problem(secret: str, value: str) -> str:
    if not secret.isascii() or not secret.isprintable():
        return f"{value} must be visible ASCII characters"
    if len(secret) < MIN_TOKEN_BYTES:
        return f"{value} shorter than {MIN_TOKEN_BYTES} bytes"
    return f"{value} longer than {MAX_TOKEN_BYTES} bytes"


def parse_tokens(text: str) -> Tokens:
    """The tokens of a file's text; TokensError with every problem."""
    pairs = parse_pairs(text)
    if not pairs:
        raise TokensError(["no token: every producer would be refused"])
    return Tokens(tuple(Credential.of(name, token) for name, token in pairs.items()))


def read_text(path: Path) -> str:
    """A secrets file's text (bounded); TokensError if it cannot be had."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TokensError([f"cannot read: {exc.strerror or exc}"]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise TokensError([f"larger than {MAX_FILE_BYTES} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokensError([f"not UTF-8 at byte {exc.start}"]) from exc


def read_tokens(path: Path) -> Tokens:
    """A tokens file, read and checked; TokensError with every problem."""
    return parse_tokens(read_text(path))


def world_readable(path: Path) -> bool:
    """Whether any user of the machine may read the file (a warning, not a refusal: secrets
    mounted by Kubernetes are 0644 by default)."""
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


Version = tuple[int, int, int, int]


def _version(path: Path) -> Version | None:
    """What changes when the file is written or replaced (mtime, size, inode, device)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class SecretsFile(Generic[T]):
    """Re-reads a secrets file (``read``) when it changes (polled every ``interval`` seconds)
    or when asked (:meth:`request_reload`, on SIGHUP). A good file replaces the secrets
    (``on_change``); a bad one keeps the previous ones, is logged in one line per read (its
    problems by line, never a secret) and reported to ``on_reload(False)``. ``kind`` names the
    file in the log (``tokens``, ``secrets``)."""

    def __init__(
        self,
        path: Path,
        read: Callable[[Path], T],
        *,
        kind: str,
        interval: float,
        on_change: Callable[[T], Awaitable[object]],
        on_reload: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self.path = path
        self.read = read
        self.kind = kind
        self.interval = interval
        self.on_change = on_change
        self.on_reload = on_reload
        self._seen = _version(path)
        self._asked = asyncio.Event()

    def request_reload(self) -> None:
        """Read the file again now, changed or not (from a signal handler: no await)."""
        self._asked.set()

    async def run(self) -> None:
        """Poll every ``interval`` seconds, or at once when a reload is asked for."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._asked.wait()
            await self.poll()

    async def poll(self) -> bool | None:
        """Read the file if it changed since the last read (or a reload was asked for): whether
        it was taken, or None if it was not read."""
        asked, version = self._asked.is_set(), _version(self.path)
        self._asked.clear()
        if not asked and version == self._seen:
            return None
        self._seen = version
        return await self.reload()

    async def reload(self) -> bool:
        """Read the file now; True if its secrets are in use."""
        try:
            secrets = self.read(self.path)
        except TokensError as exc:
            log.error("%s file %s refused, the previous ones kept: %s", self.kind, self.path, exc)
            self.on_reload(False)
            return False
        if world_readable(self.path):
            log.warning("%s file %s is readable by every user (chmod o-r)", self.kind, self.path)
        log.info("%s file %s loaded", self.kind, self.path)
        await self.on_change(secrets)
        self.on_reload(True)
        return True
