"""What every wire format shares: its options, bounded labels and reasons, and its rejections.

The native format and the platform formats are all adapters (:class:`Adapter`): pure, bytes in,
events and rejections out, and they never raise: a bug in one becomes a rejection of the input that
triggered it, not a dead source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import msgspec

from ingest.model import UNKNOWN_KIND, Decoded, Reason, Rejection
from ingest.money import MAX_AMOUNT, MoneyError
from ingest.redact import masked, masked_text
from ingest.regions import RegionTable, default_regions

OTHER_PLATFORM = "other"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


@dataclasses.dataclass(frozen=True, slots=True)
class FormatOptions:
    """What a source's config decides about the frames it reads."""

    default_stream: str | None = None
    allowed_streams: frozenset[str] | None = None
    platforms: frozenset[str] = frozenset()
    max_frame_bytes: int = 256 * 1024
    max_events_per_frame: int = 1000
    regions: RegionTable = dataclasses.field(default_factory=default_regions)
    max_future_seconds: float = 24 * 3600
    """Events dated further ahead than this are refused: a wrong clock must not pin the
    latest-by-event-time viewers gauge for ever."""
    clock: Callable[[], float] = time.time

    def for_stream(self, stream: str) -> FormatOptions:
        """Options for frames whose transport names their stream (an MQTT topic level): it is
        the default, and an event naming another stream is rejected."""
        allowed = self.allowed_streams
        only = frozenset({stream}) if allowed is None or stream in allowed else frozenset()
        return dataclasses.replace(self, default_stream=stream, allowed_streams=only)


def classify(error: msgspec.ValidationError) -> Reason:
    """Map msgspec's validation message to a bounded reason."""
    message = str(error)
    if message.startswith("Object missing required field"):
        return Reason.MISSING_FIELD
    if message.startswith("Invalid value") and message.endswith("`$.kind`"):
        return Reason.UNKNOWN_KIND
    if message.startswith("Invalid RFC3339") or "timezone" in message:
        return Reason.INVALID_TIMESTAMP
    if message.startswith("Expected `str` matching regex") and message.endswith("`$.currency`"):
        return Reason.INVALID_CURRENCY
    if ">=" in message or "<=" in message or "length" in message:
        return Reason.OUT_OF_RANGE
    if ", got `" in message:
        return Reason.INVALID_TYPE
    return Reason.INVALID_VALUE


def undecodable(error: msgspec.DecodeError) -> Reason:
    """Why msgspec could not parse a body. (Invalid UTF-8 in a string raised UnicodeDecodeError
    up to msgspec 0.22, a DecodeError since 0.23: both are caught.)"""
    return Reason.INVALID_UTF8 if str(error).startswith("Invalid UTF-8") else Reason.MALFORMED_JSON


class Adapter:
    """Base of every wire format: the rules each applies whatever the platform.

    A frame too large is refused unread; an event dated beyond the allowed clock skew, an amount
    that is not exact money or is absurdly large, each become a rejection with a bounded reason;
    and :meth:`guarded` turns any failure of a decoder into a rejection of the input that
    triggered it, so a bug never takes a source down.
    """

    def __init__(self, options: FormatOptions) -> None:
        self.options = options

    def label(self, platform: str) -> str:
        """``platform`` when it is a configured one, else ``other``: labels stay bounded."""
        return platform if platform in self.options.platforms else OTHER_PLATFORM

    def timestamp(
        self, when: dt.datetime, raw: bytes, kind: str, stream: str | None = None
    ) -> int | Rejection:
        """Milliseconds since the epoch, or the rejection of an event dated beyond the allowed
        clock skew."""
        ts_ms = (when - _EPOCH) // _MS
        if ts_ms > (self.options.clock() + self.options.max_future_seconds) * 1000:
            return self.reject(Reason.OUT_OF_RANGE, "timestamp in the future", raw, kind, stream)
        return ts_ms

    def now_ms(self) -> int:
        return int(self.options.clock() * 1000)

    def amount(
        self, minor_units: Callable[[], int], raw: bytes, stream: str | None = None
    ) -> int | Rejection:
        """An order's amount, ``minor_units()``, or the order's rejection when that is not exact
        money (:class:`MoneyError`) or above :data:`MAX_AMOUNT`."""
        try:
            amount = minor_units()
        except MoneyError as exc:
            reason = Reason.INVALID_CURRENCY if exc.currency_error else Reason.INVALID_AMOUNT
            return self.reject(reason, str(exc), raw, "order", stream)
        if amount > MAX_AMOUNT:
            detail = f"amount above {MAX_AMOUNT:_} minor units"
            return self.reject(Reason.OUT_OF_RANGE, detail, raw, "order", stream)
        return amount

    def reject(
        self,
        reason: Reason,
        detail: str,
        raw: bytes,
        kind: str = UNKNOWN_KIND,
        stream: str | None = None,
    ) -> Rejection:
        """A rejection filed under ``stream`` when it is one the source may count, else under
        the source's default stream (a stream outside the allow-list must not get a dead-letter
        key), keeping of ``raw`` only what :meth:`redact` leaves, and of ``detail`` (which may
        quote the input) no phone number or email."""
        allowed = self.options.allowed_streams
        if stream is None or (allowed is not None and stream not in allowed):
            stream = self.options.default_stream
        return Rejection(reason, masked_text(detail), self.redact(raw), stream, kind)

    def redact(self, raw: bytes) -> bytes:
        """What a dead letter keeps of a rejected frame: here the frame with phone numbers (any
        run of 9 or more digits) and email addresses masked (``ingest.redact``). A format whose
        frames carry more personal data keeps less."""
        return masked(raw)

    def invalid(
        self,
        exc: msgspec.DecodeError,
        raw: bytes,
        kind: str = UNKNOWN_KIND,
        stream: str | None = None,
    ) -> Rejection:
        """The rejection of a body that does not match its format's shape."""
        if isinstance(exc, msgspec.ValidationError):
            return self.reject(classify(exc), str(exc), raw, kind, stream)
        return self.reject(undecodable(exc), str(exc), raw, kind, stream)

    def guarded(self, raw: bytes, decode: Callable[[], list[Decoded]]) -> list[Decoded]:
        """``decode()``, with oversize frames and any failure turned into a rejection."""
        if len(raw) > self.options.max_frame_bytes:
            return [self.reject(Reason.OVERSIZE, f"frame of {len(raw)} bytes", raw)]
        try:
            return decode()
        except UnicodeDecodeError as exc:
            return [self.reject(Reason.INVALID_UTF8, str(exc), raw)]
        except RecursionError:
            return [self.reject(Reason.MALFORMED_JSON, "nested too deeply", raw)]
        except Exception as exc:  # a decoder bug must not take the source down with it
            return [self.reject(Reason.INVALID_VALUE, f"decoder error: {type(exc).__name__}", raw)]


class PlatformAdapter(Adapter):
    """Base of the platform formats, whose frames do not name our stream: each source of one
    counts into the stream its config names. ``platform`` is the label when it is a configured
    one."""

    def __init__(self, options: FormatOptions, platform: str) -> None:
        if options.default_stream is None:
            raise ValueError("a platform format needs the source's stream")
        super().__init__(options)
        self.stream = options.default_stream
        self.platform = self.label(platform)


def as_bytes(frame: bytes | str) -> bytes:
    return frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
