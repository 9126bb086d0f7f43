"""Push tokens: which producers may push to a ``websocket-server`` source, and a file of them
that is read again while the source runs (so a token is rolled out or revoked without a restart).

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
from typing import Final

log = logging.getLogger(__name__)

PRODUCER_PATTERN: Final = r"[a-z0-9][a-z0-9_.-]{0,63}"
ENV_PRODUCER: Final = "env"
"""The producer name of the single token a source takes from ``token_env``."""
MIN_TOKEN_BYTES: Final = 16
MAX_TOKEN_BYTES: Final = 4096
MAX_TOKENS: Final = 100
"""Lines of a tokens file: the producer label stays bounded."""
MAX_FILE_BYTES: Final = 1024 * 1024

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


def parse_tokens(text: str) -> Tokens:
    """The tokens of a file's text; TokensError with every problem."""
    errors: list[str] = []
    credentials: list[Credential] = []
    names: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            errors.append(f"line {number}: expected '<producer> <token>'")
            continue
        name, token = fields
        problems = [
            f"producer name must match {PRODUCER_PATTERN}" if not _PRODUCER.fullmatch(name) else "",
            "" if _TOKEN.fullmatch(token) else _token_problem(token),
            f"producer {name!r} is already on line {names[name]}" if name in names else "",
            f"the same token is already on line {tokens[token]}" if token in tokens else "",
        ]
        problems = [problem for problem in problems if problem]
        errors.extend(f"line {number}: {problem}" for problem in problems)
        names.setdefault(name, number)
        tokens.setdefault(token, number)
        if not problems:
            credentials.append(Credential.of(name, token))
    if len(names) > MAX_TOKENS:
        errors.append(f"more than {MAX_TOKENS} producers")
    if not errors and not credentials:
        errors.append("no token: every producer would be refused")
    if errors:
        raise TokensError(errors)
    return Tokens(tuple(credentials))


def _token_problem(token: str) -> str:
    if not token.isascii() or not token.isprintable():
        return "token must be visible ASCII characters"
    if len(token) < MIN_TOKEN_BYTES:
        return f"token shorter than {MIN_TOKEN_BYTES} bytes"
    return f"token longer than {MAX_TOKEN_BYTES} bytes"


def read_tokens(path: Path) -> Tokens:
    """A tokens file, read and checked; TokensError with every problem."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TokensError([f"cannot read: {exc.strerror or exc}"]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise TokensError([f"larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokensError([f"not UTF-8 at byte {exc.start}"]) from exc
    return parse_tokens(text)


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


class TokensFile:
    """Re-reads a tokens file when it changes (polled every ``interval`` seconds) or when asked
    (:meth:`request_reload`, on SIGHUP). A good file replaces the tokens (``on_change``); a bad
    one keeps the previous tokens, is logged once (one line per version of the file) and
    reported to ``on_reload(False)``."""

    def __init__(
        self,
        path: Path,
        tokens: Tokens,
        *,
        interval: float,
        on_change: Callable[[Tokens], Awaitable[object]],
        on_reload: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self.path = path
        self.tokens = tokens
        self.interval = interval
        self.on_change = on_change
        self.on_reload = on_reload
        self._seen = _version(path)
        self._asked = asyncio.Event()

    def request_reload(self) -> None:
        """Read the file again now, changed or not (from a signal handler: no await)."""
        self._asked.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._asked.wait()
            asked, version = self._asked.is_set(), _version(self.path)
            self._asked.clear()
            if asked or version != self._seen:
                self._seen = version
                await self.reload()

    async def reload(self) -> bool:
        """Read the file now; True if its tokens are in use."""
        try:
            tokens = read_tokens(self.path)
        except TokensError as exc:
            log.error(
                "tokens file %s refused, the previous %d token(s) kept: %s",
                self.path,
                len(self.tokens),
                exc,
            )
            self.on_reload(False)
            return False
        if world_readable(self.path):
            log.warning("tokens file %s is readable by every user (chmod o-r)", self.path)
        self.tokens = tokens
        log.info("tokens file %s loaded: %d token(s)", self.path, len(tokens))
        await self.on_change(tokens)
        self.on_reload(True)
        return True
