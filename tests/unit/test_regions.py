"""Tests for country and region normalisation (ingest.regions)."""

from __future__ import annotations

import unicodedata

import pytest

from ingest.regions import (
    DEFAULT_TABLES,
    OTHER,
    UNKNOWN,
    VIETNAM,
    RegionTable,
    default_regions,
    normalise_country,
)

# The 63 provincial-level units before 1 July 2025: (name, ASCII spelling, unit it is now part of).
OLD_UNITS: list[tuple[str, str, str]] = [
    ("Hà Nội", "Ha Noi", "Hà Nội"),
    ("Hải Phòng", "Hai Phong", "Hải Phòng"),
    ("Hà Giang", "Ha Giang", "Tuyên Quang"),
    ("Cao Bằng", "Cao Bang", "Cao Bằng"),
    ("Bắc Kạn", "Bac Kan", "Thái Nguyên"),
    ("Tuyên Quang", "Tuyen Quang", "Tuyên Quang"),
    ("Lào Cai", "Lao Cai", "Lào Cai"),
    ("Điện Biên", "Dien Bien", "Điện Biên"),
    ("Lai Châu", "Lai Chau", "Lai Châu"),
    ("Sơn La", "Son La", "Sơn La"),
    ("Yên Bái", "Yen Bai", "Lào Cai"),
    ("Hòa Bình", "Hoa Binh", "Phú Thọ"),
    ("Thái Nguyên", "Thai Nguyen", "Thái Nguyên"),
    ("Lạng Sơn", "Lang Son", "Lạng Sơn"),
    ("Quảng Ninh", "Quang Ninh", "Quảng Ninh"),
    ("Bắc Giang", "Bac Giang", "Bắc Ninh"),
    ("Phú Thọ", "Phu Tho", "Phú Thọ"),
    ("Vĩnh Phúc", "Vinh Phuc", "Phú Thọ"),
    ("Bắc Ninh", "Bac Ninh", "Bắc Ninh"),
    ("Hải Dương", "Hai Duong", "Hải Phòng"),
    ("Hưng Yên", "Hung Yen", "Hưng Yên"),
    ("Thái Bình", "Thai Binh", "Hưng Yên"),
    ("Hà Nam", "Ha Nam", "Ninh Bình"),
    ("Nam Định", "Nam Dinh", "Ninh Bình"),
    ("Ninh Bình", "Ninh Binh", "Ninh Bình"),
    ("Thanh Hóa", "Thanh Hoa", "Thanh Hóa"),
    ("Nghệ An", "Nghe An", "Nghệ An"),
    ("Hà Tĩnh", "Ha Tinh", "Hà Tĩnh"),
    ("Quảng Bình", "Quang Binh", "Quảng Trị"),
    ("Quảng Trị", "Quang Tri", "Quảng Trị"),
    ("Thừa Thiên Huế", "Thua Thien Hue", "Huế"),
    ("Đà Nẵng", "Da Nang", "Đà Nẵng"),
    ("Quảng Nam", "Quang Nam", "Đà Nẵng"),
    ("Quảng Ngãi", "Quang Ngai", "Quảng Ngãi"),
    ("Bình Định", "Binh Dinh", "Gia Lai"),
    ("Phú Yên", "Phu Yen", "Đắk Lắk"),
    ("Khánh Hòa", "Khanh Hoa", "Khánh Hòa"),
    ("Ninh Thuận", "Ninh Thuan", "Khánh Hòa"),
    ("Bình Thuận", "Binh Thuan", "Lâm Đồng"),
    ("Kon Tum", "Kon Tum", "Quảng Ngãi"),
    ("Gia Lai", "Gia Lai", "Gia Lai"),
    ("Đắk Lắk", "Dak Lak", "Đắk Lắk"),
    ("Đắk Nông", "Dak Nong", "Lâm Đồng"),
    ("Lâm Đồng", "Lam Dong", "Lâm Đồng"),
    ("Bình Phước", "Binh Phuoc", "Đồng Nai"),
    ("Tây Ninh", "Tay Ninh", "Tây Ninh"),
    ("Bình Dương", "Binh Duong", "Hồ Chí Minh"),
    ("Đồng Nai", "Dong Nai", "Đồng Nai"),
    ("Bà Rịa–Vũng Tàu", "Ba Ria - Vung Tau", "Hồ Chí Minh"),
    ("Hồ Chí Minh", "Ho Chi Minh", "Hồ Chí Minh"),
    ("Long An", "Long An", "Tây Ninh"),
    ("Tiền Giang", "Tien Giang", "Đồng Tháp"),
    ("Bến Tre", "Ben Tre", "Vĩnh Long"),
    ("Trà Vinh", "Tra Vinh", "Vĩnh Long"),
    ("Vĩnh Long", "Vinh Long", "Vĩnh Long"),
    ("Đồng Tháp", "Dong Thap", "Đồng Tháp"),
    ("An Giang", "An Giang", "An Giang"),
    ("Kiên Giang", "Kien Giang", "An Giang"),
    ("Cần Thơ", "Can Tho", "Cần Thơ"),
    ("Hậu Giang", "Hau Giang", "Cần Thơ"),
    ("Sóc Trăng", "Soc Trang", "Cần Thơ"),
    ("Bạc Liêu", "Bac Lieu", "Cà Mau"),
    ("Cà Mau", "Ca Mau", "Cà Mau"),
]


@pytest.fixture(scope="module")
def regions() -> RegionTable:
    return default_regions()


def test_old_unit_table_is_complete() -> None:
    assert len(OLD_UNITS) == 63
    assert len({old for old, _, _ in OLD_UNITS}) == 63
    assert len({new for _, _, new in OLD_UNITS}) == 34


def test_vietnam_has_the_34_units(regions: RegionTable) -> None:
    assert len(VIETNAM) == 34
    assert set(regions.names("VN")) == set(VIETNAM) == {new for _, _, new in OLD_UNITS}
    assert list(regions.names("VN")) == sorted(VIETNAM)
    assert all(unicodedata.is_normalized("NFC", name) for name in VIETNAM)
    assert DEFAULT_TABLES["VN"] is VIETNAM
    assert regions.countries() == frozenset({"VN"})


@pytest.mark.parametrize("name", sorted(VIETNAM))
def test_canonical_name_maps_to_itself(regions: RegionTable, name: str) -> None:
    assert regions.normalise("VN", name) == name


@pytest.mark.parametrize(("old", "ascii_name", "new"), OLD_UNITS)
def test_every_old_unit_maps_to_its_new_unit(
    regions: RegionTable, old: str, ascii_name: str, new: str
) -> None:
    assert regions.normalise("VN", old) == new
    assert regions.normalise("VN", ascii_name) == new
    assert regions.normalise("VN", f"Tỉnh {old}") == new
    assert regions.normalise("VN", old.upper()) == new


@pytest.mark.parametrize(
    "spelling",
    ["Hà Nội", "Ha Noi", "ha noi", "HN", "Hanoi", "Thành phố Hà Nội", "TP Hà Nội", " hà  nội "],
)
def test_hanoi_spellings(regions: RegionTable, spelling: str) -> None:
    assert regions.normalise("VN", spelling) == "Hà Nội"


@pytest.mark.parametrize("spelling", ["Bắc Giang", "Bac Giang", "tỉnh Bắc Giang", "BAC GIANG"])
def test_bac_giang_is_now_bac_ninh(regions: RegionTable, spelling: str) -> None:
    assert regions.normalise("VN", spelling) == "Bắc Ninh"


@pytest.mark.parametrize(
    "spelling",
    [
        "TP.HCM",
        "TP. HCM",
        "tphcm",
        "HCMC",
        "Ho Chi Minh City",
        "Thành phố Hồ Chí Minh",
        "Sài Gòn",
        "Saigon",
        "Bình Dương",
        "Bà Rịa - Vũng Tàu",
        "Vũng Tàu",
    ],
)
def test_ho_chi_minh_spellings(regions: RegionTable, spelling: str) -> None:
    assert regions.normalise("VN", spelling) == "Hồ Chí Minh"


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("Thanh Hoá", "Thanh Hóa"),
        ("Thanh Hóa", "Thanh Hóa"),
        ("Khánh Hoà", "Khánh Hòa"),
        ("Hoà Bình", "Phú Thọ"),
        ("Đắc Lắc", "Đắk Lắk"),
        ("Daklak", "Đắk Lắk"),
        ("Đắc Nông", "Lâm Đồng"),
        ("TT Huế", "Huế"),
        ("Hue", "Huế"),
        ("ÐÀ NẴNG", "Đà Nẵng"),  # U+00D0 look-alike of Đ
        ("Hai Phong City", "Hải Phòng"),
    ],
)
def test_spelling_variants(regions: RegionTable, spelling: str, expected: str) -> None:
    assert regions.normalise("VN", spelling) == expected


@pytest.mark.parametrize("name", ["Đà Nẵng", "Thừa Thiên Huế", "Khánh Hòa", "Bà Rịa–Vũng Tàu"])
def test_decomposed_input(regions: RegionTable, name: str) -> None:
    decomposed = unicodedata.normalize("NFD", name)
    assert decomposed != name
    assert regions.normalise("VN", decomposed) == regions.normalise("VN", name) != OTHER


@pytest.mark.parametrize("region", ["Atlantis", "Tỉnh", "Phnom Penh", "x" * 10_000, "DN"])
def test_unrecognised_region_is_other(regions: RegionTable, region: str) -> None:
    assert regions.normalise("VN", region) == OTHER


@pytest.mark.parametrize("region", [None, "", "   ", " - ", 123, 4.5, b"Ha Noi", ["Hà Nội"]])
def test_missing_region_is_unknown(regions: RegionTable, region: object) -> None:
    assert regions.normalise("VN", region) == UNKNOWN
    assert regions.normalise("JP", region) == UNKNOWN


def test_country_without_table_is_other(regions: RegionTable) -> None:
    assert regions.normalise("JP", "Tokyo") == OTHER
    assert regions.normalise("JP", "Hà Nội") == OTHER
    assert regions.normalise(UNKNOWN, "Hà Nội") == OTHER
    assert regions.names("JP") == ()


def test_country_code_case_is_ignored_by_table(regions: RegionTable) -> None:
    assert regions.normalise("vn", "Hanoi") == "Hà Nội"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vn", "VN"),
        (" JP ", "JP"),
        ("US", "US"),
        ("gb", "GB"),
        ("XX", UNKNOWN),
        ("UK", UNKNOWN),
        ("Vietnam", UNKNOWN),
        ("VNM", UNKNOWN),
        ("", UNKNOWN),
        (None, UNKNOWN),
        (5, UNKNOWN),
        (b"VN", UNKNOWN),
    ],
)
def test_normalise_country(value: object, expected: str) -> None:
    assert normalise_country(value) == expected


@pytest.mark.parametrize(
    "table",
    [
        {"Thanh Hóa": (), "Thanh Hoá": ()},
        {"Hà Nội": ("HN",), "Hà Nam": ("HN",)},
        {"Hà Nội": (), "Đồng Nai": ("Thành phố Hà Nội",)},
    ],
)
def test_conflicting_table_raises(table: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(ValueError, match="share key"):
        RegionTable({"VN": table})


def test_invalid_tables_raise() -> None:
    with pytest.raises(ValueError, match="alpha-2"):
        RegionTable({"Vietnam": {"Hà Nội": ()}})
    with pytest.raises(ValueError, match="empty"):
        RegionTable({"VN": {"Hà Nội": ("--",)}})
    with pytest.raises(TypeError):
        RegionTable({"VN": {"Hà Nội": "Hanoi"}})


def test_same_alias_in_two_countries_is_fine() -> None:
    table = RegionTable({"VN": {"Hà Nội": ("Capital",)}, "JP": {"Tōkyō": ("Capital",)}})
    assert table.normalise("VN", "capital") == "Hà Nội"
    assert table.normalise("JP", "capital") == "Tōkyō"
    assert table.normalise("JP", "Tokyo") == "Tōkyō"


def test_merged_adds_a_country(regions: RegionTable) -> None:
    combined = regions.merged({"th": {"Bangkok": ("Krung Thep",), "Chiang Mai": ()}})
    assert combined.countries() == frozenset({"VN", "TH"})
    assert combined.normalise("TH", "krung thep") == "Bangkok"
    assert combined.normalise("TH", "Bangkok Province") == "Bangkok"
    assert combined.normalise("VN", "Bac Giang") == "Bắc Ninh"
    assert combined.names("TH") == ("Bangkok", "Chiang Mai")
    assert regions.countries() == frozenset({"VN"})
    assert regions.normalise("TH", "Bangkok") == OTHER


def test_merged_replaces_a_country(regions: RegionTable) -> None:
    combined = regions.merged({"VN": {"Miền Bắc": ("Hà Nội",)}})
    assert combined.names("VN") == ("Miền Bắc",)
    assert combined.normalise("VN", "Ha Noi") == "Miền Bắc"
    assert combined.normalise("VN", "Bắc Giang") == OTHER
    assert regions.normalise("VN", "Ha Noi") == "Hà Nội"


def test_merged_checks_conflicts(regions: RegionTable) -> None:
    with pytest.raises(ValueError, match="share key"):
        regions.merged({"TH": {"Bangkok": (), "Bang-kok": ()}})
