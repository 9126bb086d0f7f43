"""What the platform formats share: one stream from config, bounded labels, rejections.

A platform's frames do not name our stream, so each source of a platform format counts into the
stream its config names. Like the native format, an adapter never raises: a bug in one becomes
a rejection of the input that triggered it, not a dead source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import msgspec

from ingest.model import UNKNOWN_KIND, Decoded, Reason, Rejection
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
    """Base of the platform formats. ``platform`` is the label when it is a configured one."""

    def __init__(self, options: FormatOptions, platform: str) -> None:
        if options.default_stream is None:
            raise ValueError("a platform format needs the source's stream")
        self.options = options
        self.stream = options.default_stream
        self.platform = self.label(platform)

    def label(self, platform: str) -> str:
        return platform if platform in self.options.platforms else OTHER_PLATFORM

    def ts_ms(self, when: dt.datetime) -> int | None:
        """Milliseconds since the epoch, or None if dated beyond the allowed clock skew."""
        ts_ms = (when - _EPOCH) // _MS
        if ts_ms > (self.options.clock() + self.options.max_future_seconds) * 1000:
            return None
        return ts_ms

    def now_ms(self) -> int:
        return int(self.options.clock() * 1000)

    def reject(
        self, reason: Reason, detail: str, raw: bytes, kind: str = UNKNOWN_KIND
    ) -> Rejection:
        return Rejection(reason, detail, raw, self.stream, kind)

    def invalid(self, exc: msgspec.DecodeError, raw: bytes, kind: str = UNKNOWN_KIND) -> Rejection:
        """The rejection of a body that does not match its platform's documented shape."""
        if isinstance(exc, msgspec.ValidationError):
            return self.reject(classify(exc), str(exc), raw, kind)
        return self.reject(undecodable(exc), str(exc), raw, kind)

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


def as_bytes(frame: bytes | str) -> bytes:
    return frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
