"""The catalog model and its TOML and CSV parsers (ingest.catalog), fed bytes."""

from __future__ import annotations

import pytest

from ingest.catalog import MAX_FILE_BYTES, Catalog, CatalogError, Product, load, parse_csv

TOML = """\
[[products]]
sku = "vt05"
name = "Vải thiều 5 kg"
unit_grams = 5000
stock_units = 2000
aliases = ["vt 05", "vt5", "vải 5kg", "thùng 5 ký"]
prices = { VND = 250000, USD = 1250 }

[[products]]
sku = "VTQ"
name = "Vải quả, cân ký"
unit_grams = "kg"
stock_grams = 1_500_000
"""

CSV = """\
sku,name,unit_grams,stock_units,stock_grams,aliases,price_VND,price_usd
VT05,Vải thiều 5 kg,5000,2000,,vt 05;vt5;vải 5kg;thùng 5 ký,250000,1250
VTQ,"Vải quả, cân ký",kg,,1500000,,,
"""

WANT = (
    Product(
        "VT05",
        "Vải thiều 5 kg",
        ("vt 05", "vt5", "vải 5kg", "thùng 5 ký"),
        5000,
        {"VND": 250_000, "USD": 1250},
        10_000_000,
    ),
    Product("VTQ", "Vải quả, cân ký", (), None, {}, 1_500_000),
)


def test_toml_and_csv_give_the_same_products() -> None:
    toml = load(TOML.encode(), "lucngan.toml")
    csv = load(CSV.encode(), "lucngan.csv")
    assert toml.products == WANT
    assert csv.products == WANT
    assert toml.digest != csv.digest
    assert len(toml.digest) == 12


def test_a_spreadsheet_byte_order_mark_and_crlf_are_read() -> None:
    data = ("\ufeff" + CSV.replace("\n", "\r\n")).encode()
    assert parse_csv(data, "export.csv").products == WANT


def test_lookup_by_sku_in_any_case_and_weights() -> None:
    catalog = load(TOML.encode(), "c.toml")
    box = catalog.get("vt05")
    assert box is not None
    assert box is catalog.get("VT05")
    assert catalog.get("VT99") is None
    assert box.line_grams(3) == 15_000
    by_kg = catalog.get("VTQ")
    assert by_kg is not None
    assert by_kg.sold_by_kg
    assert by_kg.line_grams(2) == 2000  # a unit of a product sold by the kg is a kilogram
    assert [p.sku for p in catalog] == ["VT05", "VTQ"]
    assert len(catalog) == 2


def test_the_product_has_the_attributes_the_comment_parser_relies_on() -> None:
    product = WANT[0]
    assert isinstance(product.sku, str)
    assert isinstance(product.name, str)
    assert isinstance(product.aliases, tuple)
    assert product.unit_grams == 5000
    assert WANT[1].unit_grams is None
    assert hash(product) == hash(WANT[0])  # usable in sets despite the price table


def test_every_toml_error_at_once_with_its_line_and_field() -> None:
    text = """\
title = "x"

[[products]]
sku = "VT 05"
name = ""
unit_grams = 0

[[products]]
sku = "VT06"
name = "Six"
unit_grams = "kg"
stock_units = 3
prices = { XXX = 1, VND = 1.5 }
colour = "red"

[[products]]
sku = "vt06"
name = "Six again"
unit_grams = 100
stock_units = 1
stock_grams = 100
aliases = ["", "vt 6"]
"""
    with pytest.raises(CatalogError) as info:
        load(text.encode(), "c.toml")
    assert info.value.errors == [
        "c.toml:1: title: unknown key",
        "c.toml:3: products[0]: sku: required, letters, digits, '.', '_' or '-' (at most 32), "
        "got 'VT 05'",
        "c.toml:3: products[0]: name: required, at most 128 characters",
        'c.toml:3: products[0]: unit_grams: required, grams of one unit (1 to 1000000) or "kg"',
        "c.toml:8: products[1]: colour: unknown key",
        "c.toml:8: products[1]: stock_units: a product sold by the kg has its stock in stock_grams",
        "c.toml:8: products[1]: prices.XXX: not an ISO 4217 currency code",
        "c.toml:8: products[1]: prices.VND: an integer number of minor units, 0 to "
        "1000000000000000, got 1.5",
        "c.toml:16: products[2]: stock_units: give stock_units or stock_grams, not both",
        "c.toml:16: products[2]: aliases: '': each a text of 1 to 64 characters",
    ]


def test_every_csv_error_at_once_with_its_row_and_column() -> None:
    text = (
        "sku,name,unit_grams,colour,price_VND\n"
        "VT01,One,1000,,100\n"
        "VT02,Two,heavy,,1.5\n"
        "VT03,,500,,\n"
        "VT04,Four,500,,1,extra\n"
        "vt01,One again,1000,,\n"
    )
    with pytest.raises(CatalogError) as info:
        load(text.encode(), "c.csv")
    assert info.value.errors == [
        "c.csv:1: colour: unknown column",
        "c.csv:5: more cells than the header has columns",
        'c.csv:3: unit_grams: required, grams of one unit (1 to 1000000) or "kg"',
        "c.csv:3: prices.VND: an integer number of minor units, 0 to 1000000000000000, got '1.5'",
        "c.csv:4: name: required, at most 128 characters",
        "c.csv:6: 'VT01' is already used at c.csv:2",
    ]


def test_aliases_may_not_name_two_products_whatever_the_case_spaces_or_diacritics() -> None:
    text = (
        "sku,name,unit_grams,aliases\n"
        "VT05,Five,5000,vải 5kg;thùng 5 ký\n"
        "VT06,Six,6000,VAI 5 KG\n"
        "VT07,Seven,7000,vt05\n"
    )
    with pytest.raises(CatalogError) as info:
        load(text.encode(), "c.csv")
    assert info.value.errors == [
        "c.csv:3: 'VAI 5 KG' is already used at c.csv:2",
        "c.csv:4: 'vt05' is already used at c.csv:2",
    ]


@pytest.mark.parametrize(
    ("data", "origin", "error"),
    [
        (b"[[products]\n", "c.toml", "c.toml: not valid TOML"),
        (b"\xff\xfe", "c.toml", "c.toml: not UTF-8 at byte 0"),
        (b"", "c.csv", "c.csv:1: no header row"),
        (b"sku,name,unit_grams\n", "c.csv", "c.csv: no products"),
        (b"products = 3\n", "c.toml", "c.toml:1: products: must be [[products]] tables"),
        (b"x" * (MAX_FILE_BYTES + 1), "c.csv", "c.csv: larger than"),
    ],
)
def test_unusable_files_are_refused_with_a_reason(data: bytes, origin: str, error: str) -> None:
    with pytest.raises(CatalogError) as info:
        load(data, origin)
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors


def test_stock_in_units_is_kept_in_grams_exactly() -> None:
    text = (
        '[[products]]\nsku = "BIG"\nname = "Big"\nunit_grams = 999999\nstock_units = 1000000001\n'
    )
    (product,) = load(text.encode(), "c.toml").products
    assert product.stock_grams == 999_999 * 1_000_000_001
    assert Catalog((product,)).get("big") == product
