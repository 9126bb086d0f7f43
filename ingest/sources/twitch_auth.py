"""Twitch access tokens for Helix (and YouTube's, from Google's OAuth server, which answers the
same refresh-token grant at ``<oauth_url>/token``): one given from outside, or one kept fresh with a
refresh token.

- :class:`StaticToken`: the token from the environment, as it is (an app or user token that
  something else keeps valid). A 401 from Helix ends the session, and the source retries.
- :class:`RefreshingToken`: the OAuth refresh-token flow of dev.twitch.tv/docs/authentication/
  refresh-tokens. ``POST <oauth_url>/token`` with ``grant_type=refresh_token`` (form-encoded:
  ``client_id``, ``client_secret`` unless the app is a public client, ``refresh_token``) answers
  ``access_token``, ``refresh_token`` and usually ``expires_in``. When it does not,
  ``GET <oauth_url>/validate`` (``Authorization: OAuth <token>``) says ``expires_in``; the token
  is also validated every ``validate_interval`` (Twitch asks apps to validate hourly). A token is
  refreshed once less than max(10 % of its lifetime, ``refresh_margin``) is left (at most half its
  lifetime, at least ``min_interval`` after it was issued), and at once when Helix or validate
  answers 401. Public clients get a new refresh token with every refresh (the old one stops
  working): it is kept, and written to ``refresh_token_file`` when one is configured.
- A refresh refused with 400, 401 or 403 means the refresh token is no longer valid (the user
  took the app's access away, changed their password, or it was used up) or the client
  credentials are wrong: reason ``invalid``, which no retry mends. Network
  errors and other answers are ``network``, ``http`` and ``malformed``. Every failed attempt is
  reported to ``on_failure`` with its reason; one log line per run of failures of one reason.
  The background loop retries with backoff; cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from ingest.sources.backoff import Backoff
from ingest.sources.reconnect import ReconnectSettings

log = logging.getLogger(__name__)

FAILURE_REASONS = ("invalid", "network", "http", "malformed")
"""The bounded ``reason`` of a failed refresh."""

_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class RefreshError(Exception):
    """A refresh failed; ``reason`` is one of :data:`FAILURE_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(
            f"token refresh {reason}: {detail}" if detail else f"token refresh {reason}"
        )
        self.reason = reason


class Tokens(Protocol):
    """Where Helix gets its bearer token."""

    async def current(self) -> str:
        """A token believed valid (RefreshError if none can be had)."""
        ...

    async def rejected(self, token: str) -> str | None:
        """Helix answered 401 to ``token``: a token to retry with once, or None to give up."""
        ...

    async def run(self) -> None:
        """Keep the token fresh until cancelled (returns at once if there is nothing to do)."""
        ...


class StaticToken:
    """A token managed outside: used as is, never refreshed."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    async def current(self) -> str:
        return self._token

    async def rejected(self, token: str) -> str | None:
        return None

    async def run(self) -> None:
        return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RefreshSettings(ReconnectSettings):
    client_id: str
    refresh_token: str = dataclasses.field(repr=False)
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    """None for a public client (which sends none, and whose refresh tokens rotate)."""
    refresh_token_file: Path | None = None
    """Holds the latest refresh token: read at start if present, rewritten when it rotates."""
    oauth_url: str = "https://id.twitch.tv/oauth2"
    timeout: float = 10.0
    refresh_margin: float = 300.0
    """Refresh once less than max(10 % of the lifetime, this) is left (at most half of it)."""
    min_interval: float = 1.0
    """Never refresh a token sooner than this after it was issued (a zero lifetime)."""
    validate_interval: float = 3600.0
    """Seconds between validations; ``math.inf`` for an OAuth server without ``/validate``
    (Google's, whose token answer always carries ``expires_in``)."""
    platform: str = "twitch"
    """Whose tokens (in log lines and the runbook link)."""


def refresh_at(issued: float, lifetime: float, margin: float, min_interval: float) -> float:
    """When a token issued at ``issued`` and valid for ``lifetime`` seconds is refreshed."""
    left = min(max(0.1 * lifetime, margin), 0.5 * lifetime)
    return issued + max(lifetime - left, min_interval)


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    value: str = dataclasses.field(repr=False)
    refresh_at: float
    expires_at: float


class RefreshingToken:
    """A user access token refreshed before it expires (see the module docstring)."""

    def __init__(
        self,
        settings: RefreshSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_refreshed: Callable[[], None] = lambda: None,
        on_failure: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max, rng=rng)
        self.on_refreshed = on_refreshed
        self.on_failure = on_failure
        self._refresh_token = self._stored() or settings.refresh_token
        self._token: _Token | None = None
        self._validated_at = 0.0
        self._retry_at: float | None = None
        self._failing: str | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"RefreshingToken(client_id={self.settings.client_id!r})"

    # --- what Helix asks --------------------------------------------------------------------

    async def current(self) -> str:
        async with self._lock:
            token = self._token
            if token is None or self.clock() >= token.expires_at:
                token = await self._refresh()
            return token.value

    async def rejected(self, token: str) -> str | None:
        async with self._lock:
            if self._token is not None and self._token.value != token:
                return self._token.value  # refreshed meanwhile
            return (await self._refresh()).value

    # --- the background loop ----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._wait())
            try:
                async with self._lock:
                    await self._check()
            except RefreshError:
                self._retry_at = self.clock() + self.backoff.next()
            else:
                self._retry_at = None

    def _wait(self) -> float:
        now = self.clock()
        if self._retry_at is not None:
            return max(0.0, self._retry_at - now)
        if self._token is None:
            return 0.0
        due = min(self._token.refresh_at, self._validated_at + self.settings.validate_interval)
        return max(0.0, due - now)

    async def _check(self) -> None:
        """Refresh the token if it is due (or missing), else validate it if that is due."""
        now = self.clock()
        token = self._token
        validate = token is not None and now >= self._validated_at + self.settings.validate_interval
        if token is None or now >= token.refresh_at:
            await self._refresh()
        elif validate and await self._validate(token.value) is None:
            await self._refresh()  # revoked or expired early

    # --- the OAuth calls --------------------------------------------------------------------

    async def _refresh(self) -> _Token:
        """A new access token (under the lock); RefreshError, reported, if there is none."""
        try:
            token = await self._exchange()
        except RefreshError as exc:
            self._failed(exc)
            raise
        self._token = token
        self.refreshes += 1
        self.backoff.reset()
        if self._failing is not None:
            log.info("%s token refresh works again", self.settings.platform)
            self._failing = None
        self.on_refreshed()
        return token

    async def _exchange(self) -> _Token:
        settings = self.settings
        form = {
            "client_id": settings.client_id,
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
        }
        if settings.client_secret is not None:
            form["client_secret"] = settings.client_secret
        issued = self.clock()
        body = await self._call("POST", "/token", data=form)
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise RefreshError("malformed", "no access_token")
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            await asyncio.to_thread(self._store, rotated)
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool):
            lifetime = await self._validate(access)
            if lifetime is None:
                raise RefreshError("http", "the new token does not validate")
        self._validated_at = issued
        margin, floor = settings.refresh_margin, settings.min_interval
        return _Token(access, refresh_at(issued, lifetime, margin, floor), issued + lifetime)

    async def _validate(self, access: str) -> float | None:
        """The token's remaining lifetime, or None if it is no longer valid (401)."""
        checked = self.clock()
        try:
            body = await self._call(
                "GET", "/validate", headers={"Authorization": f"OAuth {access}"}
            )
        except RefreshError as exc:
            if exc.reason == "invalid":
                return None
            raise
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool):
            raise RefreshError("malformed", "validate without expires_in")
        self._validated_at = checked
        return float(lifetime)

    async def _call(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        """One request to the OAuth server: its JSON object, or RefreshError."""
        url = self.settings.oauth_url.rstrip("/") + path
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.request(method, url, **options) as response,
            ):
                if response.status in (400, 401, 403):
                    raise RefreshError("invalid", f"http {response.status}")
                if response.status != 200:
                    raise RefreshError("http", f"http {response.status}")
                body = await response.json(content_type=None)
        except _NETWORK_ERRORS as exc:
            if _stopping():
                raise asyncio.CancelledError from exc
            raise RefreshError("network", type(exc).__name__) from exc
        except ValueError as exc:  # not JSON
            raise RefreshError("malformed", "not JSON") from exc
        if not isinstance(body, dict):
            raise RefreshError("malformed", "not an object")
        return body

    # --- failures and the refresh token file ------------------------------------------------

    def _failed(self, exc: RefreshError) -> None:
        self.on_failure(exc.reason)
        if exc.reason != self._failing:
            self._failing = exc.reason
            if exc.reason == "invalid":
                platform = self.settings.platform
                log.error(
                    "%s token refresh refused: the refresh token is invalid or revoked; "
                    "issue a new one (docs/operations.md#livestreamtwitchtokenrefreshfailing)",
                    platform,
                )
            else:
                log.warning("%s token refresh failed: %s", self.settings.platform, exc)
        if exc.reason == "invalid":
            stored = self._stored()  # an operator may have put a new one there
            if stored is not None:
                self._refresh_token = stored

    def _stored(self) -> str | None:
        path = self.settings.refresh_token_file
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _store(self, refresh_token: str) -> None:
        """Write the rotated refresh token where the next start reads it (atomically, 0600)."""
        path = self.settings.refresh_token_file
        if path is None:
            return
        temporary = path.with_name(path.name + ".tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(refresh_token + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            log.error("cannot write the rotated refresh token to %s: %s", path, exc.strerror)


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
