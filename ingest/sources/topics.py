"""MQTT topic patterns: a filter with at most one ``{stream}`` level that names the stream."""

from __future__ import annotations

import dataclasses
from typing import Final

STREAM_LEVEL: Final = "{stream}"


@dataclasses.dataclass(frozen=True, slots=True)
class TopicMatch:
    stream: str | None
    """The topic's ``{stream}`` level, or None when the pattern has none."""


class TopicPattern:
    """``livestream/{stream}/orders`` subscribes to ``livestream/+/orders`` and takes the
    stream from the second level. ``+`` and a final ``#`` are ordinary MQTT wildcards."""

    def __init__(self, pattern: str) -> None:
        levels = pattern.split("/")
        if not pattern:
            raise ValueError("empty topic pattern")
        for index, level in enumerate(levels):
            if level in ("+", STREAM_LEVEL) or (level == "#" and index == len(levels) - 1):
                continue
            if any(c in level for c in "+#{}"):
                raise ValueError(f"level {level!r}: a wildcard must fill a whole level")
        if levels.count(STREAM_LEVEL) > 1:
            raise ValueError("at most one {stream} level")
        self.pattern = pattern
        self._levels = levels
        self._stream_index = levels.index(STREAM_LEVEL) if STREAM_LEVEL in levels else None

    @property
    def filter(self) -> str:
        return "/".join("+" if level == STREAM_LEVEL else level for level in self._levels)

    def match(self, topic: str) -> TopicMatch | None:
        levels = topic.split("/")
        for index, want in enumerate(self._levels):
            if want == "#":
                break
            if index >= len(levels):
                return None
            if want not in ("+", STREAM_LEVEL) and want != levels[index]:
                return None
        else:
            if len(levels) != len(self._levels):
                return None
        stream = levels[self._stream_index] if self._stream_index is not None else None
        return TopicMatch(stream)

    def __repr__(self) -> str:
        return f"TopicPattern({self.pattern!r})"
