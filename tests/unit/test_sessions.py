"""Session idle end, by an injected clock (pure logic, no Redis)."""

from __future__ import annotations

from workers.sessions import IDLE, OPEN, Session, parse_ended, view

IDLE_SECONDS = 30 * 60
START = 1_780_000_000


def current(last: int) -> dict[str, str]:
    return {
        "n": "3",
        "open": "1",
        "start": str(START),
        "last": str(last),
        "first": "29666666",
        "last_minute": "29666700",
    }


def test_an_open_session_stays_open_up_to_the_idle_time() -> None:
    last = START + 600
    session = view(current(last), now=last + IDLE_SECONDS, idle_seconds=IDLE_SECONDS)
    assert session == Session(3, START, None, OPEN, 29666666, 29666700)
    assert session.seconds(now=last + IDLE_SECONDS) == 600 + IDLE_SECONDS


def test_past_the_idle_time_it_ended_idle_at_its_last_event() -> None:
    last = START + 600
    session = view(current(last), now=last + IDLE_SECONDS + 1, idle_seconds=IDLE_SECONDS)
    assert session == Session(3, START, last, IDLE, 29666666, 29666700)
    assert session.seconds(now=last + 10 * IDLE_SECONDS) == 600


def test_a_closed_or_missing_session_is_not_current() -> None:
    assert view({}, now=START, idle_seconds=IDLE_SECONDS) is None
    assert view({**current(START), "open": "0"}, now=START, idle_seconds=IDLE_SECONDS) is None


def test_ended_records_parse_and_garbage_is_skipped() -> None:
    assert parse_ended(2, f"{START}|{START + 60}|ended|29666666|") == Session(
        2, START, START + 60, "ended", 29666666, None
    )
    assert parse_ended(2, "x|y|ended||") is None
    assert parse_ended(2, "1|2") is None
