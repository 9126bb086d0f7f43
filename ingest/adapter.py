"""What the platform formats share: one stream from config, bounded labels, rejections.

A platform's frames do not name our stream, so each source of a platform format counts into the
stream its config names. Like the native format, an adapter never raises: a bug in one becomes
a rejection of the input that triggered it, not a dead source.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec

from ingest.model import UNKNOWN_KIND, Decoded, Reason, Rejection
from ingest.native import OTHER_PLATFORM, NativeOptions, classify, undecodable

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


class Adapter:
    """Base of the platform formats. ``platform`` is the label when it is a configured one."""

    def __init__(self, options: NativeOptions, platform: str) -> None:
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
