"""The facebook-live source's configuration: what it takes, and every mistake refused at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from workers.config import ConfigError, HttpClientConfig, parse

ENV = {"FB_TOKEN": "EAAGpagetoken0123456789"}


def config(text: str) -> str:
    return f"""
[[sources]]
name = "facebook"
type = "http-client"
format = "facebook-live"
stream = "live-1"
{text}
"""


def test_a_facebook_source_with_its_defaults() -> None:
    data = tomllib.loads(
        config('token_env = "FB_TOKEN"\n[sources.facebook]\nlive_video_id = "1357924680135792"')
    )
    (source,) = parse(data, "t", ENV).sources
    assert isinstance(source, HttpClientConfig)
    assert source.facebook.mode == "sse"
    assert source.facebook.comment_rate == "ten_per_second"
    assert source.facebook.live_filter == "no_filter"
    assert source.facebook.graph_url == "https://graph.facebook.com"
    assert source.facebook.streaming_url == "https://streaming-graph.facebook.com"


def test_every_mistake_is_reported_with_where_it_is(tmp_path: Path) -> None:
    bad_file = tmp_path / "token"
    bad_file.write_text("short\n", encoding="utf-8")
    text = config(
        f"""token_env = "FB_UNSET"
token_file = "{bad_file}"
[sources.facebook]
live_video_id = "not-digits"
mode = "push"
comment_rate = "all_of_them"
api_version = "26"
page_limit = 500
"""
    )
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), "t", ENV)
    errors = "\n".join(info.value.errors)
    for expected in (
        "sources[0]: exactly one of token_env and token_file",
        "sources[0].token_env: environment variable FB_UNSET is not set",
        f"sources[0].token_file: {bad_file}: the token must be 16 to 4096 bytes",
        "sources[0].facebook.live_video_id",
        "sources[0].facebook.mode",
        "sources[0].facebook.comment_rate",
        "sources[0].facebook.api_version",
        "sources[0].facebook.page_limit",
    ):
        assert expected in errors, expected


def test_a_facebook_source_needs_its_table_and_a_stream() -> None:
    text = """
[[sources]]
name = "facebook"
type = "http-client"
token_env = "FB_TOKEN"
"""
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), "t", ENV)
    assert any(error.startswith("sources[0].facebook") for error in info.value.errors)
    text += '[sources.facebook]\nlive_video_id = "1"\n'
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), "t", ENV)
    assert any("needs a stream" in error for error in info.value.errors)


def test_a_token_file_is_read_at_start(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  EAAGpagetoken0123456789\n", encoding="utf-8")
    text = config(f'token_file = "{token}"\n[sources.facebook]\nlive_video_id = "1"')
    (source,) = parse(tomllib.loads(text), "t", {}).sources
    assert isinstance(source, HttpClientConfig)
    assert source.token_file == str(token)
    token.write_text("two words here 0123456789\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), "t", {})
    assert info.value.errors == [
        f"sources[0].token_file: {token}: the token must be visible ASCII characters, one word"
    ]
