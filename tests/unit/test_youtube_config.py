"""The YouTube Live chat source's config: every problem at once, with where it is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from workers.config import ConfigError, HttpPollConfig, YouTubeConfig, _SourceBase, load, parse

ENV = {"T": "t" * 16, "R": "r" * 40, "S": "s" * 30}


def youtube_source(stream: str | None = "live", **youtube: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"name": "yt", "type": "http-poll", "format": "youtube-livechat"}
    if stream is not None:
        source["stream"] = stream
    source["youtube"] = youtube
    return {"sources": [source]}


def errors_of(data: dict[str, Any], env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, "test.toml", env)
    return info.value.errors


def test_a_valid_source_gets_the_documented_defaults() -> None:
    config = parse(
        youtube_source(
            video_id="dQw4w9WgXcQ", refresh_token_env="R", client_id="c", client_secret_env="S"
        ),
        "test.toml",
        ENV,
    )
    (source,) = config.sources
    assert isinstance(source, HttpPollConfig)
    assert source.youtube.oauth_url == "https://oauth2.googleapis.com"
    assert source.youtube.api_url == "https://www.googleapis.com/youtube/v3"
    assert source.youtube.max_results == 500
    assert source.youtube.quota_probe_interval_seconds == 3600


def test_every_problem_is_reported_with_its_place() -> None:
    data = youtube_source(video_id="bad id!", token_env="T", max_results=100)
    data["sources"].append(youtube_source(token_env="T")["sources"][0] | {"name": "yt2"})
    assert errors_of(data) == [
        "sources[0].youtube.video_id: String should match pattern '^[A-Za-z0-9_-]{1,64}$'",
        "sources[0].youtube.max_results: Input should be greater than or equal to 200",
        "sources[1].youtube: Value error, set one of live_chat_id and video_id",
    ]
    assert errors_of(youtube_source(live_chat_id="c1")) == [
        "sources[0].youtube: Value error, set one of token_env (static) and refresh_token_env "
        "(refreshed)"
    ]
    assert errors_of(youtube_source(live_chat_id="c1", refresh_token_env="R")) == [
        "sources[0].youtube: Value error, refresh_token_env needs client_id"
    ]
    assert errors_of(youtube_source(stream=None, live_chat_id="c1", token_env="T")) == [
        "sources[0]: Value error, format 'youtube-livechat' needs a stream: its pages name none"
    ]


def test_its_secrets_are_checked_like_every_secret() -> None:
    data = youtube_source(
        live_chat_id="c1", refresh_token_env="NO_REFRESH", client_id="c", client_secret_env="S"
    )
    assert errors_of(data, {"S": "short"}) == [
        "sources[0].youtube.refresh_token_env: environment variable NO_REFRESH is not set",
        "sources[0].youtube.client_secret_env: environment variable S is shorter than 16 bytes",
    ]


def test_the_platforms_config_shows_every_youtube_key() -> None:
    platforms = Path(__file__).resolve().parents[2] / "config" / "platforms.toml"
    secrets = {"YOUTUBE_REFRESH_TOKEN": "y" * 50, "YOUTUBE_CLIENT_SECRET": "g" * 30}
    secrets |= {"TWITCH_REFRESH_TOKEN": "r" * 50, "TWITCH_CLIENT_SECRET": "c" * 30}
    config = load(
        platforms, secrets | {"SHOPIFY_SECRET": "s" * 32, "FACEBOOK_PAGE_TOKEN": "f" * 40}
    )
    (youtube,) = [source for source in config.sources if isinstance(source, HttpPollConfig)]
    assert (youtube.format, youtube.youtube.video_id) == ("youtube-livechat", "dQw4w9WgXcQ")
    text = platforms.read_text(encoding="utf-8")
    for key in [*YouTubeConfig.model_fields, *HttpPollConfig.model_fields]:
        if key not in _SourceBase.model_fields and key != "youtube":  # the table itself
            assert re.search(rf"^(# )?{key} = ", text, re.M), key
