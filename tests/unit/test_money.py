"""Tests for exact money conversion (ingest.money)."""

from __future__ import annotations

import pytest

from ingest.money import MoneyError, exponent, to_major, to_minor


@pytest.mark.parametrize(
    ("currency", "digits"),
    [
        ("VND", 0),
        ("JPY", 0),
        ("KRW", 0),
        ("USD", 2),
        ("AUD", 2),
        ("EUR", 2),
        ("KWD", 3),
        ("BHD", 3),
    ],
)
def test_exponent(currency: str, digits: int) -> None:
    assert exponent(currency) == digits


@pytest.mark.parametrize("currency", ["usd", "Usd", "US", "USDD", "", "ABC", "XXX", "XAU", " USD"])
def test_exponent_of_a_non_currency(currency: str) -> None:
    with pytest.raises(MoneyError) as info:
        exponent(currency)
    assert info.value.currency_error is True


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        ("12.5", "USD", 1250),
        ("12", "USD", 1200),
        ("0", "USD", 0),
        ("0.01", "USD", 1),
        ("0.00", "USD", 0),
        ("12.500", "USD", 1250),
        ("12.500000000", "USD", 1250),
        ("240000", "VND", 240_000),
        ("240000.0", "VND", 240_000),
        ("1500", "JPY", 1500),
        ("1.5", "KWD", 1500),
        ("1.234", "BHD", 1234),
        ("0.001", "KWD", 1),
        ("99.99", "AUD", 9999),
        ("999999999999999999", "VND", 999_999_999_999_999_999),
        ("999999999999999999.99", "USD", 99_999_999_999_999_999_999),
        (0, "USD", 0),
        (7, "USD", 700),
        (240000, "VND", 240_000),
        (2, "KWD", 2000),
    ],
)
def test_to_minor(amount: str | int, currency: str, minor: int) -> None:
    assert to_minor(amount, currency) == minor
    assert type(to_minor(amount, currency)) is int


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("12.501", "USD"),
        ("0.001", "USD"),
        ("1.5", "VND"),
        ("1.05", "JPY"),
        ("0.0001", "KWD"),
        ("12.5000000001", "USD"),
        ("012", "USD"),
        ("00", "USD"),
        ("00.5", "USD"),
        (" 12", "USD"),
        ("12 ", "USD"),
        ("1 000", "VND"),
        ("1,5", "USD"),
        ("+1", "USD"),
        ("-1", "USD"),
        ("1e3", "USD"),
        ("1E3", "USD"),
        ("", "USD"),
        (".", "USD"),
        (".5", "USD"),
        ("5.", "USD"),
        ("NaN", "USD"),
        ("Infinity", "USD"),
        ("0x10", "USD"),
        ("1_000", "VND"),
        ("١٢", "VND"),
        ("12\n", "USD"),
        ("1" * 19, "VND"),
        (-1, "USD"),
    ],
)
def test_to_minor_refuses(amount: str | int, currency: str) -> None:
    with pytest.raises(MoneyError) as info:
        to_minor(amount, currency)
    assert info.value.currency_error is False


@pytest.mark.parametrize("currency", ["usd", "XYZ", "XXX", "", "US"])
def test_to_minor_with_an_invalid_currency(currency: str) -> None:
    for amount in ("1", 1, "not even a number"):
        with pytest.raises(MoneyError) as info:
            to_minor(amount, currency)
        assert info.value.currency_error is True


def test_money_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="more decimals than USD"):
        to_minor("1.234", "USD")


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [(1250, "USD", 12.5), (0, "USD", 0.0), (240_000, "VND", 240_000.0), (1500, "KWD", 1.5)],
)
def test_to_major(minor: int, currency: str, major: float) -> None:
    assert to_major(minor, currency) == major


def test_to_major_with_an_invalid_currency() -> None:
    with pytest.raises(MoneyError):
        to_major(100, "usd")


@pytest.mark.parametrize("currency", ["VND", "USD", "KWD"])
def test_round_trip(currency: str) -> None:
    for minor in (0, 1, 7, 1250, 123_456_789):
        text = f"{to_major(minor, currency):.{exponent(currency)}f}"
        assert to_minor(text, currency) == minor
