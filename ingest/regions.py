"""Normalise an order's country and region into bounded Prometheus label values.

Countries become ISO 3166-1 alpha-2 codes; regions become one canonical name per country from a
fixed table, so label cardinality stays bounded whatever the input. The Vietnamese table follows
the provincial merger in force since 1 July 2025 (Resolution 202/2025/QH15): 34 units, with every
one of the 63 former units mapped to the unit it now belongs to.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from types import MappingProxyType

import pycountry

UNKNOWN = "unknown"
OTHER = "other"

_ALPHA_2: frozenset[str] = frozenset(str(country.alpha_2) for country in pycountry.countries)

# Longer inputs are never a region name; refusing them keeps the per-order cost bounded.
_MAX_REGION_CHARS = 200

# Đ/đ do not decompose under NFD; U+00D0/U+00F0 (Ð/ð) are frequent look-alike typos for them.
_D_FOLD = str.maketrans({"Đ": "d", "đ": "d", "Ð": "d", "ð": "d"})
_PREFIXES = ("thanhpho", "tinh", "tp", "province", "city")
_SUFFIXES = ("province", "city")


def normalise_country(value: object) -> str:
    """Upper-case ISO 3166-1 alpha-2 code if ``value`` is one, else ``UNKNOWN``."""
    if not isinstance(value, str):
        return UNKNOWN
    code = value.strip().upper()
    return code if code in _ALPHA_2 else UNKNOWN


def _region_key(text: str) -> str:
    """Matching key: no diacritics, case, punctuation, spaces or administrative affix."""
    decomposed = unicodedata.normalize("NFD", text.translate(_D_FOLD))
    key = "".join(ch for ch in decomposed.casefold() if ch.isalnum())
    for prefix in _PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix) :]
            break
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
            break
    return key


def _country_code(code: str) -> str:
    normalised = normalise_country(code)
    if normalised == UNKNOWN:
        raise ValueError(f"not an ISO 3166-1 alpha-2 country code: {code!r}")
    return normalised


class RegionTable:
    """Per-country lookup from free-text region to canonical region name."""

    def __init__(self, tables: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """Index canonical names and aliases; raise ``ValueError`` on ambiguous keys."""
        source: dict[str, dict[str, tuple[str, ...]]] = {}
        index: dict[str, dict[str, str]] = {}
        for raw_code, table in tables.items():
            code = _country_code(raw_code)
            if code in source:
                raise ValueError(f"country {code} is given twice")
            entries: dict[str, tuple[str, ...]] = {}
            keys: dict[str, str] = {}
            source[code] = entries
            index[code] = keys
            for raw_name, aliases in table.items():
                if isinstance(aliases, str):
                    raise TypeError(f"aliases of {raw_name!r} must be a sequence, not a str")
                name = unicodedata.normalize("NFC", raw_name.strip())
                entries[name] = entries.get(name, ()) + tuple(aliases)
                for spelling in (raw_name, *aliases):
                    key = _region_key(spelling)
                    if not key:
                        raise ValueError(f"{code}: {spelling!r} has an empty matching key")
                    other = keys.setdefault(key, name)
                    if other != name:
                        raise ValueError(
                            f"{code}: {spelling!r} of {name!r} and {other!r} share key {key!r}"
                        )
        self._source = source
        self._index = index

    def normalise(self, country: str, region: object) -> str:
        """Canonical region name, ``UNKNOWN`` if region is missing, ``OTHER`` if unrecognised."""
        if not isinstance(region, str):
            return UNKNOWN
        if len(region) > _MAX_REGION_CHARS:
            return OTHER
        key = _region_key(region)
        if not key:
            return UNKNOWN
        keys = self._index.get(country.strip().upper())
        if keys is None:
            return OTHER
        return keys.get(key, OTHER)

    def countries(self) -> frozenset[str]:
        """Country codes that have a table."""
        return frozenset(self._index)

    def names(self, country: str) -> tuple[str, ...]:
        """Sorted canonical region names of ``country`` (empty if it has no table)."""
        return tuple(sorted(self._source.get(country.strip().upper(), {})))

    def merged(self, extra: Mapping[str, Mapping[str, Sequence[str]]]) -> RegionTable:
        """New table with ``extra``'s countries added, replacing any existing ones whole."""
        combined: dict[str, Mapping[str, Sequence[str]]] = dict(self._source)
        for code, table in extra.items():
            combined[_country_code(code)] = table
        return RegionTable(combined)


VIETNAM: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # Centrally-run cities.
        "Hà Nội": ("Hanoi", "HN"),
        "Huế": ("Thừa Thiên Huế", "Thừa Thiên - Huế", "TT Huế", "TTH", "Hue"),
        "Hải Phòng": ("Hải Dương", "Haiphong"),
        "Đà Nẵng": ("Quảng Nam", "Da Nang", "Danang"),
        "Hồ Chí Minh": (
            "TP.HCM",
            "TPHCM",
            "HCM",
            "HCMC",
            "Ho Chi Minh City",
            "Sài Gòn",
            "Saigon",
            "SG",
            "Bình Dương",
            "Bà Rịa - Vũng Tàu",
            "BRVT",
            "Vũng Tàu",
        ),
        "Cần Thơ": ("Sóc Trăng", "Hậu Giang"),
        # Provinces left unchanged.
        "Lai Châu": (),
        "Điện Biên": (),
        "Sơn La": (),
        "Lạng Sơn": (),
        "Quảng Ninh": (),
        "Thanh Hóa": ("Thanh Hoá",),
        "Nghệ An": (),
        "Hà Tĩnh": (),
        "Cao Bằng": (),
        # Provinces formed by merger; aliases are the units merged into them.
        "Tuyên Quang": ("Hà Giang",),
        "Lào Cai": ("Yên Bái",),
        "Thái Nguyên": ("Bắc Kạn", "Bắc Cạn"),
        "Phú Thọ": ("Vĩnh Phúc", "Hòa Bình", "Hoà Bình"),
        "Bắc Ninh": ("Bắc Giang",),
        "Hưng Yên": ("Thái Bình",),
        "Ninh Bình": ("Hà Nam", "Nam Định"),
        "Quảng Trị": ("Quảng Bình",),
        "Quảng Ngãi": ("Kon Tum", "Kontum"),
        "Gia Lai": ("Bình Định",),
        "Khánh Hòa": ("Khánh Hoà", "Ninh Thuận"),
        "Lâm Đồng": ("Đắk Nông", "Dak Nong", "Daknong", "Đắc Nông", "Bình Thuận"),
        "Đắk Lắk": ("Dak Lak", "Daklak", "Đắc Lắc", "Phú Yên"),
        "Đồng Nai": ("Bình Phước",),
        "Tây Ninh": ("Long An",),
        "Vĩnh Long": ("Bến Tre", "Trà Vinh"),
        "Đồng Tháp": ("Tiền Giang",),
        "Cà Mau": ("Bạc Liêu",),
        "An Giang": ("Kiên Giang",),
    }
)

DEFAULT_TABLES: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({"VN": VIETNAM})


@cache
def default_regions() -> RegionTable:
    """Shared table built from ``DEFAULT_TABLES``; it is immutable."""
    return RegionTable(DEFAULT_TABLES)
