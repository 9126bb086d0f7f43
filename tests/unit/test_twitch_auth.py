"""The pure parts of the Twitch token refresh: when a token is refreshed, and that no secret
shows in a repr."""

from __future__ import annotations

import pytest

from ingest.sources.eventsub import Helix
from ingest.sources.twitch_auth import RefreshingToken, RefreshSettings, StaticToken, refresh_at


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [
        (14_400, 14_400 - 1_440),  # Twitch's ~4 h: 10 % (24 min) is more than 5 min
        (1_800, 1_500),  # 30 min: the 5 min margin wins
        (400, 200),  # the margin is at most half the lifetime
        (3, 1.5),  # the tests' short lifetimes
        (0, 1),  # a zero lifetime is not refreshed in a busy loop
    ],
)
def test_a_token_is_refreshed_before_it_expires(lifetime: float, expected: float) -> None:
    assert refresh_at(1000.0, lifetime, margin=300, min_interval=1) == 1000.0 + expected


def test_no_secret_shows_in_a_repr() -> None:
    settings = RefreshSettings(
        client_id="app-id",
        client_secret="client-secret-0123456789",
        refresh_token="refresh-token-0123456789",
    )
    texts = [
        repr(settings),
        repr(RefreshingToken(settings)),
        repr(StaticToken("static-token-0123456789")),
        repr(Helix("https://api.twitch.tv/helix", "app-id", "static-token-0123456789")),
    ]
    for text in texts:
        assert "0123456789" not in text, text
    assert "app-id" in texts[0]
