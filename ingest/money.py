"""Exact money: ISO 4217 codes and decimal strings to integer minor units, and back for display."""

from __future__ import annotations

import re
from functools import cache

from iso4217 import Currency

MAX_AMOUNT = 10**15
"""Largest order amount in major units as given, and in minor units once converted (so that
the int64 totals in Redis cannot overflow before ~9,000 such absurd orders)."""

_DECIMAL = re.compile(r"(?P<int>0|[1-9][0-9]{0,17})(?:\.(?P<frac>[0-9]{1,9}))?")


class MoneyError(ValueError):
    """A currency or amount that cannot be represented exactly."""

    def __init__(self, message: str, *, currency_error: bool) -> None:
        super().__init__(message)
        self.currency_error = currency_error


@cache
def exponent(currency: str) -> int:
    """Number of minor-unit digits of an ISO 4217 currency (VND 0, USD 2, KWD 3)."""
    member = (
        Currency.__members__.get(currency) if len(currency) == 3 and currency.isupper() else None
    )
    if member is None or member.exponent is None:
        raise MoneyError(f"not an ISO 4217 currency: {currency!r}", currency_error=True)
    return int(member.exponent)


def to_minor(amount: str | int, currency: str) -> int:
    """Parse a non-negative amount in major units into exact integer minor units.

    ``amount`` is an integer or a plain decimal string ("240000", "12.50"). Floats, signs,
    exponents and more decimals than the currency has are refused, never rounded.
    """
    digits = exponent(currency)
    scale: int = 10**digits
    if isinstance(amount, int):
        if amount < 0:
            raise MoneyError("amount is negative", currency_error=False)
        return amount * scale
    match = _DECIMAL.fullmatch(amount)
    if match is None:
        raise MoneyError(f"not a plain decimal amount: {amount[:32]!r}", currency_error=False)
    frac = (match["frac"] or "").rstrip("0")
    if len(frac) > digits:
        raise MoneyError(
            f"{amount[:32]!r} has more decimals than {currency} ({digits})", currency_error=False
        )
    return int(match["int"]) * scale + int(frac.ljust(digits, "0") or "0")


def to_major(minor: int, currency: str) -> float:
    """Minor units to major units, for display and exposition only."""
    scale: int = 10 ** exponent(currency)
    return minor / scale
