"""Exponential backoff with full jitter, reset after a healthy connection."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays of ``uniform(0, min(maximum, initial * 2**attempt))``; ``reset()`` starts over."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 64))
        self.attempt += 1
        # Never below a tenth of the initial delay: a zero delay would hammer a server.
        return max(self.initial / 10, ceiling * self._rng())

    def reset(self) -> None:
        self.attempt = 0
