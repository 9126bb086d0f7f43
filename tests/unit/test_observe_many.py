"""``observe_many`` writes the same histogram series as one ``observe`` per value."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from workers.metrics import LAG_BUCKETS, observe_many


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("h", "h", ["source"], buckets=LAG_BUCKETS, registry=registry)


def test_a_batch_observed_at_once_equals_each_observed_alone() -> None:
    rng = random.Random(7)
    # Values on every bound (observe() puts a value equal to a bound in that bucket), around
    # them, above the last finite bound, and zero.
    values = [*LAG_BUCKETS, *(b * 1.0001 for b in LAG_BUCKETS), 0.0, 7200.0]
    values += [rng.expovariate(1.0) for _ in range(500)]
    rng.shuffle(values)
    one_by_one, each = _histogram()
    at_once, batch = _histogram()
    for value in values:
        each.labels("s").observe(value)
    observe_many(batch.labels("s"), values[:300])
    observe_many(batch.labels("s"), values[300:])
    observe_many(batch.labels("s"), [])
    got, want = _samples(at_once), _samples(one_by_one)
    # Buckets and count exactly; the sum of floats up to the order it was added in.
    assert {k: v for k, v in got.items() if k != "h_sum"} == {
        k: v for k, v in want.items() if k != "h_sum"
    }
    assert got["h_sum"] == pytest.approx(want["h_sum"], rel=1e-12)
    assert want["h_count"] == len(values)


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.name + str(sorted(sample.labels.items())) * (sample.name == "h_bucket"): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
