"""Social Stream Ninja relay: chat from TikTok, YouTube, Facebook, Twitch... in one websocket.

A listener joins ``wss://io.socialstream.ninja/join/<session>/4`` (or sends
``{"join": "<session>", "in": 4}``) and receives flat JSON objects. A chat line has ``chatname``,
``chatmessage`` (HTML unless ``textonly``), ``type`` (the platform), maybe ``userid``, and
``event`` false or absent; viewer counts come as ``{"event": "viewer_updates", "meta":
{"<type>": n, ...}}`` (or one platform's ``{"event": "viewer_update", "type": t, "meta": n}``).
Everything else on the channel (other events, actions, callbacks) is ignored and counted.

Dedup identity. The relay's ``id`` is a counter of one relay instance that restarts (at a random
value) with it, so two different lines can carry the same ``id`` across a restart. An identity
must be the same for the same line whichever relay run or ingester replica delivers it, so it is
derived from the line itself, in this order:

1. ``meta.messageId`` when the relay passes the platform's own message id: exact.
2. Otherwise a hash of (platform, user, text, n), where n numbers the identical
   (platform, user, text) lines of the current relay run: the first "VT01" of a buyer is 1, their
   second 2. A run starts with each connection and whenever the relay's ``id`` does not
   increase or jumps ahead by more than :data:`RESTART_JUMP` (a restarted relay). Replicas
   reading one session number alike, and lines that a restarted relay sends again get their
   old identities back.

Limits of rule 2: a buyer who repeats the exact same text after a relay restart or an ingester
reconnect is taken for a resend of their earlier line and not counted again (for an order
comment that is the sellers' own rule: a repeated comment is the same order); a relay restart
whose new counter lands just above the old one (within :data:`RESTART_JUMP`, about one restart
in nine) goes unnoticed, so lines it sends again count again; lines sent while the ingester is
disconnected are never seen, as the relay keeps no history.
"""

from __future__ import annotations

import collections
import hashlib
import html.parser
from collections.abc import Callable
from typing import Annotated, Final

import msgspec

from ingest.adapter import FormatOptions, PlatformAdapter, as_bytes
from ingest.model import Comment, Decoded, Reason, Viewers

NOT_CHAT: Final = "not_chat"
OTHER_EVENT: Final = "other_event"
RESTART_JUMP: Final = 10_000
"""A relay ``id`` this far past the previous one is taken for a restarted relay too: its counter
restarts at a random value below 90,000, so a restart can also move it up."""
MAX_LINES_REMEMBERED: Final = 100_000
"""Distinct (platform, user, text) lines numbered per relay run; beyond it, the oldest half is
forgotten (their next repeat is numbered 1 again, as after a restart)."""

Text = Annotated[str, msgspec.Meta(max_length=64 * 1024)]
Name = Annotated[str, msgspec.Meta(max_length=256)]


class _Meta(msgspec.Struct, frozen=True):
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


class _Message(msgspec.Struct, frozen=True):
    chatname: Name | None = None
    chatmessage: Text = ""
    textonly: bool = False
    type: Name = ""
    userid: Name | int | None = None
    id: int | str | None = None
    event: str | bool | None = None
    meta: msgspec.Raw = msgspec.Raw()


def plain_text(markup: str) -> str:
    """The text of an HTML chat line: tags dropped, entities decoded, an image by its alt text
    (emotes), whitespace collapsed."""
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    return " ".join("".join(parser.parts).split())


class _TextParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.parts.append(f" {alt} ")


class SocialStreamFormat(PlatformAdapter):
    """Decodes the relay's frames for one source. Stateful only in the line numbering of
    rule 2 above; ``new_connection()`` starts a new relay run."""

    def __init__(
        self,
        options: FormatOptions,
        on_ignored: Callable[[str], None] = lambda what: None,
    ) -> None:
        super().__init__(options, "other")
        self.on_ignored = on_ignored
        self._decoder = msgspec.json.Decoder(_Message)
        self._meta = msgspec.json.Decoder(_Meta)
        self._counts: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._last_id: int | None = None

    def new_connection(self) -> None:
        self._counts.clear()
        self._last_id = None

    def decode(self, frame: bytes | str) -> list[Decoded]:
        raw = as_bytes(frame)
        return self.guarded(raw, lambda: self._decode(raw))

    def _decode(self, raw: bytes) -> list[Decoded]:
        try:
            message = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            if str(exc).startswith("Expected `object`"):
                return [self.reject(Reason.NOT_AN_OBJECT, str(exc), raw)]
            return [self.invalid(exc, raw)]
        except msgspec.DecodeError as exc:
            return [self.invalid(exc, raw)]
        if message.event in ("viewer_updates", "viewer_update"):
            return self._viewers(message, raw)
        if message.event or message.chatname is None:
            self.on_ignored(OTHER_EVENT if message.event else NOT_CHAT)
            return []
        return [self._comment(message, raw)]

    def _comment(self, message: _Message, raw: bytes) -> Decoded:
        platform = self.label(message.type)
        user = str(message.userid) if message.userid not in (None, "") else message.chatname
        if not user:
            return self.reject(Reason.MISSING_FIELD, "neither userid nor chatname", raw, "comment")
        text = message.chatmessage if message.textonly else plain_text(message.chatmessage)
        self._relay_run(message.id)
        native = self._native_id(message.meta)
        if native is not None:
            key = f"ssn:{message.type}:{native}"
        else:
            line = "\x1f".join((message.type, user, text)).encode("utf-8", "surrogatepass")
            digest = hashlib.blake2b(line, digest_size=16).digest()
            n = self._counts.pop(digest, 0) + 1
            self._counts[digest] = n
            if len(self._counts) > MAX_LINES_REMEMBERED:
                for _ in range(MAX_LINES_REMEMBERED // 2):
                    self._counts.popitem(last=False)
            key = f"ssn:{digest.hex()}:{n}"
        return Comment(self.stream, platform, key, self.now_ms(), f"{platform}:{user}"[:256])

    def _relay_run(self, relay_id: int | str | None) -> None:
        """Start a new run when the relay's counter does not increase, or leaps (it restarted)."""
        if isinstance(relay_id, str):
            relay_id = int(relay_id) if relay_id.isdigit() and len(relay_id) < 19 else None
        if relay_id is None:
            return
        last = self._last_id
        if last is not None and not last < relay_id <= last + RESTART_JUMP:
            self._counts.clear()
        self._last_id = relay_id

    def _native_id(self, meta: msgspec.Raw) -> str | None:
        if not bytes(meta).lstrip().startswith(b"{"):
            return None
        try:
            return self._meta.decode(meta).messageId
        except msgspec.DecodeError:
            return None

    def _viewers(self, message: _Message, raw: bytes) -> list[Decoded]:
        try:
            if message.event == "viewer_update":
                counts = {message.type: msgspec.json.decode(message.meta or b"null", type=int)}
            else:
                counts = msgspec.json.decode(message.meta or b"null", type=dict[str, int])
        except msgspec.DecodeError as exc:
            return [self.invalid(exc, raw, "viewers")]
        now = self.now_ms()
        events: list[Decoded] = []
        for name, count in counts.items():
            if not 0 <= count <= 1_000_000_000:
                events.append(self.reject(Reason.OUT_OF_RANGE, "viewer count", raw, "viewers"))
                continue
            platform = self.label(name)
            events.append(Viewers(self.stream, platform, f"ssn:v:{platform}:{now}", now, count))
        return events
