"""Commit times of the latency probes, taken in a process of their own.

``python -m bench.probes <redis url> <pattern>`` subscribes to the keyspace notifications
matching ``pattern``, prints ``ready``, then one line per probe committed (a ``sadd`` of a probe's
id): its ``time.perf_counter()`` at arrival. ``perf_counter`` is the system's monotonic clock, so
the bench compares it with its own send times. In its own process the stamp is not delayed by the
bench's event loop, which at the same time sends thousands of frames a second.
"""

from __future__ import annotations

import sys
import time

from redis import Redis


def main() -> None:
    url, pattern = sys.argv[1], sys.argv[2]
    client = Redis.from_url(url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe(pattern)
    out = sys.stdout
    for message in pubsub.listen():
        if message["type"] == "psubscribe":
            out.write("ready\n")
            out.flush()
        elif message["type"] == "pmessage" and message["data"] == b"sadd":
            out.write(f"{time.perf_counter()!r}\n")
            out.flush()


if __name__ == "__main__":
    main()
