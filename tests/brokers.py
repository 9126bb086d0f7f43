"""The QoS 1 publisher for tests, on a private Mosquitto (``tests.servers``)."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.sources.mqtt import Publisher
from tests.servers import Mosquitto

__all__ = ["Mosquitto", "publisher"]


def publisher(port: int, messages: Sequence[tuple[str, bytes]], pause: float = 0) -> Publisher:
    return Publisher("127.0.0.1", port, messages, pause=pause)
