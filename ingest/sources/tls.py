"""TLS for every listener (the websocket and webhook sources, ``/metrics``): loading a
certificate, checking it, and replacing it without a restart.

A listener is handed one :class:`ssl.SSLContext` when it starts listening and keeps it: the
event loop wraps each accepted connection with it once the listener has counted it
(:class:`Handshakes`, ``loop.connect_accepted_socket(ssl=...)``). To serve a
renewed certificate, :class:`ServerTls` loads the files into a *new* context and makes it
current; the listening context's ``sni_callback``, which OpenSSL calls during every handshake
(with ``server_name=None`` when the client sends no SNI, as for an IP address), points that
connection at the current context (``ssl_object.context = current``). A connection keeps the
context of its handshake, so open connections are untouched.

Loading the new files into the listening context instead (``load_cert_chain`` on it) is not
safe: OpenSSL installs the certificate before it checks the key, so a renewal whose key does
not match leaves that context with the new certificate and no usable key, and every handshake
after it fails; and ``load_verify_locations`` only ever adds CAs. A context that failed to
load here is dropped and the current one stays.

The listening context's own settings (minimum version, whether a client certificate is
required) are the ones every handshake negotiates with; only certificate, key and the client CAs
they are verified against come from the current context. Reloading changes files, not settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """One listener's TLS: its certificate (chain) and key, and the CAs that sign the client
    certificates it requires (mutual TLS) if any."""

    cert_file: str
    """PEM: the listener's certificate first, then any intermediates."""
    key_file: str
    """PEM, unencrypted."""
    client_ca_file: str | None = None
    """PEM CA certificates; set, every client must present a certificate they signed."""
    min_version: str = "1.2"
    """Oldest TLS version taken: ``1.2`` or ``1.3``."""
    reload_interval: float = 30.0
    """Seconds between looks at the files (modification time, size); a change is loaded once
    two looks in a row see it; 0: on SIGHUP only."""


class TlsError(Exception):
    """Files that do not make a working server context; ``problems`` lists each as
    "key: path: what" (``cert_file: /etc/x.pem: no PEM certificate``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True, slots=True)
class Loaded:
    """A context made from the files as they were, and the certificate it serves."""

    context: ssl.SSLContext
    not_after: float
    """The certificate's notAfter, in Unix seconds."""
    serial: int


def _ssl_reason(exc: ssl.SSLError | OSError) -> str:
    """OpenSSL's reason without CPython's source position."""
    text = str(exc.args[1]) if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def _readable(key: str, path: str, problems: list[str]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append(f"{key}: {path}: cannot read: {exc.strerror or exc}")
        return None


def _certificate(settings: TlsSettings, pem: bytes, problems: list[str]) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        problems.append(f"cert_file: {settings.cert_file}: no PEM certificate")
        return None


def _no_password() -> bytes:
    """An encrypted key fails to load rather than prompt on a terminal."""
    return b""


def _context(settings: TlsSettings, ca: bytes | None, problems: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[settings.min_version]
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"key_file: {settings.key_file}: {_ssl_reason(exc)}")
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else "no PEM certificate"
            problems.append(f"client_ca_file: {settings.client_ca_file}: {reason}")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load(settings: TlsSettings) -> Loaded:
    """A server context from the files; :class:`TlsError` with every problem found."""
    problems: list[str] = []
    pem = _readable("cert_file", settings.cert_file, problems)
    _readable("key_file", settings.key_file, problems)
    ca = None
    if settings.client_ca_file is not None:
        ca = _readable("client_ca_file", settings.client_ca_file, problems)
    if problems:
        raise TlsError(problems)
    assert pem is not None
    certificate = _certificate(settings, pem, problems)
    if certificate is None:
        raise TlsError(problems)
    context = _context(settings, ca, problems)
    if problems:
        raise TlsError(problems)
    return Loaded(context, certificate.not_valid_after_utc.timestamp(), certificate.serial_number)


Signature = tuple[tuple[int, int, int] | None, ...]


def _signature(settings: TlsSettings) -> Signature:
    """What changes when a file is replaced or rewritten: inode, size, modification time."""
    paths = (settings.cert_file, settings.key_file, settings.client_ca_file)
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            stat = None
        result.append((stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat else None)
    return tuple(result)


class ServerTls:
    """A listener's TLS: :attr:`context` to listen with (fixed), serving whatever certificate
    was loaded last. :meth:`reload` on SIGHUP; :meth:`watch` reloads when the files change.

    A reload that fails keeps the current certificate and is reported to ``on_failed`` with
    its problems; one that succeeds to ``on_loaded``. Raises :class:`TlsError` if the files do
    not load at the start."""

    def __init__(
        self,
        settings: TlsSettings,
        *,
        on_loaded: Callable[[Loaded], None] = lambda loaded: None,
        on_failed: Callable[[list[str]], None] = lambda problems: None,
    ) -> None:
        self.settings = settings
        self.on_loaded = on_loaded
        self.on_failed = on_failed
        self._signature = _signature(settings)
        self._changed: Signature | None = None
        self.current = load(settings)
        self.context = self.current.context
        self.context.sni_callback = self._choose
        on_loaded(self.current)

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        current = self.current.context
        if connection.context is not current:
            connection.context = current

    def reload(self) -> bool:
        """Load the files now; whether the certificate served from now on is theirs."""
        self._signature = _signature(self.settings)
        try:
            loaded = load(self.settings)
        except TlsError as exc:
            self.on_failed(exc.problems)
            return False
        self.current = loaded
        self.on_loaded(loaded)
        return True

    def check(self) -> bool | None:
        """Reload if the files changed since the last load (or attempt) and then stayed as
        they are since the previous check: the outcome, or None. (A renewal that writes the
        key and the certificate one after the other is loaded once both are written.)"""
        now = _signature(self.settings)
        if now == self._signature:
            self._changed = None
            return None
        if now != self._changed:
            self._changed = now
            return None
        return self.reload()

    async def watch(self, interval: float | None = None) -> None:
        """Look at the files every ``interval`` seconds (default: the settings'), forever."""
        every = self.settings.reload_interval if interval is None else interval
        if every <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(every)
            self.check()


TLS_HANDSHAKE = "tls_handshake"
"""A TLS handshake that failed (not TLS, a protocol or certificate error): a client's mistake."""
TLS_HANDSHAKE_TIMEOUT = "tls_handshake_timeout"
"""A TLS handshake not finished within its listener's timeout."""


class Handshakes:
    """TLS started on connections a listener accepted as plain TCP, so that each is counted
    against the listener's caps from its accept, not from the end of its handshake (which is
    when ``create_server(ssl=...)`` would tell the protocol).

    :meth:`start` takes the accepted socket from its plain transport before any byte is read
    (a copy of its descriptor; the plain transport is dropped) and hands it to
    ``loop.connect_accepted_socket`` with the context: the protocol then sees
    ``connection_made`` a second time, with the TLS transport. (``loop.start_tls`` on the plain
    transport would be the obvious way, but uvloop reads the ClientHello into the plain
    protocol before the upgrade takes over, and the handshake hangs.) A handshake that fails or
    times out is closed, reported to ``on_failed`` (:data:`TLS_HANDSHAKE`,
    :data:`TLS_HANDSHAKE_TIMEOUT`; a client that hangs up is not reported) and ``release`` is
    called; after a handshake, the protocol's ``connection_lost`` releases."""

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout: float,
        on_failed: Callable[[str], None],
        shutdown_timeout: float | None = None,
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.on_failed = on_failed
        self.pending: set[asyncio.Task[None]] = set()

    def start(
        self,
        transport: asyncio.Transport,
        protocol: asyncio.BaseProtocol,
        release: Callable[[], None],
        served: Callable[[], bool],
    ) -> None:
        """Start TLS on ``transport``'s connection (call from its ``connection_made``);
        ``served()`` tells whether ``protocol`` got its TLS transport."""
        plain = transport.get_extra_info("socket")
        transport.set_protocol(_Dropped())
        try:
            fd = os.dup(plain.fileno())
        except OSError:  # out of descriptors: the connection goes
            transport.abort()
            release()
            return
        transport.abort()  # closes its descriptor only: the connection lives on in ``fd``
        sock = socket.socket(plain.family, plain.type, plain.proto, fileno=fd)
        handed: list[bool] = []
        task = asyncio.get_running_loop().create_task(
            self._upgrade(sock, protocol, (release, served), handed)
        )
        self.pending.add(task)
        task.add_done_callback(lambda _: self._done(task, sock, handed, release))

    async def _upgrade(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        hooks: tuple[Callable[[], None], Callable[[], bool]],
        handed: list[bool],
    ) -> None:
        release, served = hooks
        loop = asyncio.get_running_loop()
        started = loop.time()
        handed.append(True)  # from here the event loop owns (and closes) the socket
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self.context,
                ssl_handshake_timeout=self.timeout,
                ssl_shutdown_timeout=self.shutdown_timeout,
            )
        except ssl.SSLError:
            release()
            self.on_failed(TLS_HANDSHAKE)
        except OSError as exc:  # both loops abort a handshake past its time this way
            release()
            late = isinstance(exc, ConnectionAbortedError | TimeoutError)
            if late or loop.time() - started >= self.timeout:
                self.on_failed(TLS_HANDSHAKE_TIMEOUT)
        except BaseException:
            release()
            raise
        if not served():  # asyncio: the client left during the handshake without an error
            release()

    def _done(
        self,
        task: asyncio.Task[None],
        sock: socket.socket,
        handed: list[bool],
        release: Callable[[], None],
    ) -> None:
        self.pending.discard(task)
        if not handed:  # cancelled before it ran
            sock.close()
            release()

    def close(self) -> None:
        """Abort every handshake under way (the listener stops)."""
        for task in list(self.pending):
            task.cancel()


class _Dropped(asyncio.Protocol):
    """The plain transport's protocol once its socket is taken over: nothing to tell."""
