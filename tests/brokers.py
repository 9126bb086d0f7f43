"""The QoS 1 publisher for tests, on a private Mosquitto (``workers.mosquitto_server``)."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.sources.mqtt import Publisher
from workers.mosquitto_server import Mosquitto

__all__ = ["Mosquitto", "publisher"]


def publisher(port: int, messages: Sequence[tuple[str, bytes]], pause: float = 0) -> Publisher:
    return Publisher("127.0.0.1", port, messages, pause=pause)
