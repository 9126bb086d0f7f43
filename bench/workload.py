"""A realistic event mix for the benchmark, generated fast enough to feed millions of frames.

Per unique event: 70% comments, 15% orders (1-3 items; a tenth of them later cancelled), 15%
viewer updates, spread over several streams; a configurable share of deliveries repeats a recent
event (redelivery). One native event per frame, as most relays send them.

``Workload.orders_heavy()`` is the order-heavy mix: 25% orders (1-3 items, with regions), 75%
comments, three streams, 20% redeliveries, and frames that are JSON arrays of several events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import orjson

SKUS = (("VT01", 1000, 120_000), ("VT02", 2000, 230_000), ("VT05", 5000, 540_000))
PLATFORMS = ("tiktok", "facebook", "shopee", "youtube")
COUNTRIES = (("VN", "Hà Nội"), ("VN", "Hồ Chí Minh"), ("VN", "Bắc Ninh"), ("US", None))


class Workload:
    """Deterministic frames for ``streams`` streams; ``partition(i, n)`` keeps one share."""

    def __init__(
        self,
        *,
        seed: int = 7,
        streams: int = 4,
        duplicate_share: float = 0.2,
        prefix: str = "bench",
        comment_share: float = 0.70,
        order_share: float = 0.15,
        per_frame: int = 1,
    ) -> None:
        self.seed = seed
        self.streams = [f"{prefix}-{n}" for n in range(streams)]
        self.duplicate_share = duplicate_share
        self.comment_share = comment_share
        self.order_share = order_share
        """The rest of the unique events are viewer updates."""
        self.per_frame = per_frame
        """Events per frame: 1 sends each as an object, more as a JSON array of that many."""
        self.ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    @classmethod
    def orders_heavy(cls, per_frame: int = 4) -> Workload:
        return cls(streams=3, comment_share=0.75, order_share=0.25, per_frame=per_frame)

    def events(self, frames: list[bytes]) -> int:
        """Deliveries (events, duplicates included) in ``frames`` of this workload."""
        return len(frames) * self.per_frame

    def frames(self, n: int, *, part: int = 0, parts: int = 1) -> Iterator[bytes]:
        """Frames of ``n`` deliveries (unique events and redeliveries) of the streams in
        partition ``part`` of ``parts``: ``n`` frames, or ``n // per_frame`` JSON arrays."""
        if self.per_frame == 1:
            yield from self._deliveries(n, part=part, parts=parts)
            return
        deliveries = self._deliveries(n - n % self.per_frame, part=part, parts=parts)
        for first in deliveries:
            rest = [next(deliveries) for _ in range(self.per_frame - 1)]
            yield b"[" + b",".join([first, *rest]) + b"]"

    def _deliveries(self, n: int, *, part: int = 0, parts: int = 1) -> Iterator[bytes]:
        rng = random.Random(self.seed * 1000 + part)
        streams = [s for i, s in enumerate(self.streams) if i % parts == part]
        recent: list[bytes] = []
        orders: list[tuple[str, str, str]] = []
        for i in range(n):
            if recent and rng.random() < self.duplicate_share:
                yield recent[rng.randrange(len(recent))]
                continue
            frame = self._event(rng, i, streams, orders, part)
            if len(recent) < 2000:
                recent.append(frame)
            else:
                recent[rng.randrange(2000)] = frame
            yield frame

    def _event(
        self,
        rng: random.Random,
        i: int,
        streams: list[str],
        orders: list[tuple[str, str, str]],
        part: int,
    ) -> bytes:
        stream = streams[i % len(streams)]
        platform = PLATFORMS[i % len(PLATFORMS)]
        roll = rng.random()
        uid = f"p{part}-{i}"
        if roll < self.comment_share:
            event: dict[str, object] = {
                "kind": "comment",
                "id": f"c-{uid}",
                "stream": stream,
                "platform": platform,
                "ts": self.ts,
                "user": f"u-{rng.randrange(50_000)}",
                "text": "chốt VT05 2 thùng",
            }
        elif roll < self.comment_share + self.order_share:
            if orders and rng.random() < 0.1:
                oid, ostream, oplatform = orders.pop(rng.randrange(len(orders)))
                event = {
                    "kind": "order",
                    "id": oid,
                    "status": "cancelled",
                    "stream": ostream,
                    "platform": oplatform,
                    "ts": self.ts,
                }
            else:
                items = [rng.choice(SKUS) for _ in range(rng.randint(1, 3))]
                country, region = rng.choice(COUNTRIES)
                event = {
                    "kind": "order",
                    "id": f"o-{uid}",
                    "status": "created",
                    "stream": stream,
                    "platform": platform,
                    "ts": self.ts,
                    "buyer": f"b-{rng.randrange(20_000)}",
                    "country": country,
                    "currency": "VND",
                    "amount": str(sum(price for _, _, price in items)),
                    "items": [
                        {"sku": sku, "qty": 1, "grams": grams, "price": str(price)}
                        for sku, grams, price in items
                    ],
                }
                if region:
                    event["region"] = region
                if len(orders) < 10_000:
                    orders.append((f"o-{uid}", stream, platform))
        else:
            event = {
                "kind": "viewers",
                "id": f"v-{uid}",
                "stream": stream,
                "platform": platform,
                "ts": self.ts,
                "count": rng.randrange(1000, 50_000),
            }
        return orjson.dumps(event)

    def probe(self, n: int, stream: str = "bench-probe") -> bytes:
        """A comment on the probe stream, for latency measurement."""
        event = {
            "kind": "comment",
            "id": f"probe-{n}",
            "stream": stream,
            "platform": "tiktok",
            "ts": self.ts,
        }
        return orjson.dumps(event)
