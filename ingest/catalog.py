"""A stream's product catalog: what each SKU is called, weighs, costs and how much of it there is.

Pure: the bytes of a TOML or CSV file in, a :class:`Catalog` out, or a :class:`CatalogError`
listing every problem with its line (TOML: the line of the product's ``[[products]]`` header)
and field. The same keys in both formats::

    sku         the product code (like an order's SKU; compared in upper case)
    name        what the seller calls it
    unit_grams  grams of one unit, or "kg": sold by the kilogram (a unit is then 1 kg)
    stock_units stock at the start of the sale in units (not for products sold by the kg) ...
    stock_grams ... or in grams; at most one of the two, both optional
    aliases     what buyers write instead of the code (CSV: separated by ";")
    prices      minor units per currency (TOML: a table; CSV: one ``price_<CUR>`` column each)

Money and weight are integers; nothing is rounded.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from ingest.money import MAX_AMOUNT, MoneyError, exponent
from ingest.native import SKU_PATTERN

MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""A larger catalog file is refused unread: a seller's product list is a few hundred rows."""
MAX_PRODUCTS: Final = 10_000
MAX_UNIT_GRAMS: Final = 1_000_000
"""One unit of at most a tonne (the native format's bound on an item's unit weight)."""
MAX_STOCK_GRAMS: Final = 10**15
MAX_NAME: Final = 128
MAX_ALIAS: Final = 64
MAX_ALIASES: Final = 64
KG: Final = "kg"
KG_GRAMS: Final = 1000

_SKU = re.compile(SKU_PATTERN)
_PRICE_COLUMN = re.compile(r"price_(?P<currency>[A-Za-z]{3})")
_PRODUCTS_HEADER = re.compile(r"^\s*\[\[\s*products\s*\]\]")
FIELDS: Final = frozenset(
    {"sku", "name", "unit_grams", "stock_units", "stock_grams", "aliases", "prices"}
)


class CatalogError(Exception):
    """An unusable catalog; ``errors`` lists every problem as "<origin>:<line>: <field>: ..."."""

    def __init__(self, origin: str, errors: list[str]) -> None:
        super().__init__(f"{origin}: {len(errors)} error(s)\n" + "\n".join(errors))
        self.origin = origin
        self.errors = errors


@dataclasses.dataclass(frozen=True, slots=True)
class Product:
    sku: str
    """Upper case, a valid order SKU."""
    name: str
    aliases: tuple[str, ...] = ()
    """As written in the file (the comment parser normalises them)."""
    unit_grams: int | None = None
    """Grams of one unit; None: sold by the kilogram."""
    prices: Mapping[str, int] = dataclasses.field(default_factory=dict, hash=False)
    """Currency -> price of one unit (of one kg if sold by the kg) in minor units."""
    stock_grams: int | None = None
    """Stock at the start of the sale; None: not tracked."""

    @property
    def sold_by_kg(self) -> bool:
        return self.unit_grams is None

    def line_grams(self, quantity: int) -> int:
        """Weight of ``quantity`` units (kilograms if sold by the kg)."""
        return quantity * (KG_GRAMS if self.unit_grams is None else self.unit_grams)


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    products: tuple[Product, ...]
    digest: str = ""
    """The first 12 hex digits of the file's SHA-256: which version is loaded."""
    _by_sku: dict[str, Product] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_sku", {p.sku: p for p in self.products})

    def get(self, sku: str) -> Product | None:
        """The product of an order's SKU (any case), or None."""
        found = self._by_sku.get(sku)
        return found if found is not None else self._by_sku.get(sku.upper())

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __len__(self) -> int:
        return len(self.products)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def load(data: bytes, origin: str) -> Catalog:
    """A catalog file's bytes, read as CSV if ``origin`` ends in ``.csv``, else as TOML."""
    if len(data) > MAX_FILE_BYTES:
        raise CatalogError(origin, [f"{origin}: larger than {MAX_FILE_BYTES} bytes"])
    if origin.lower().endswith(".csv"):
        return parse_csv(data, origin)
    return parse_toml(data, origin)


def _text(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8-sig")  # spreadsheets often write a byte-order mark
    except UnicodeDecodeError as exc:
        raise CatalogError(origin, [f"{origin}: not UTF-8 at byte {exc.start}"]) from exc


def parse_toml(data: bytes, origin: str) -> Catalog:
    """``[[products]]`` tables with the keys of the module docstring."""
    text = _text(data, origin)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(origin, [f"{origin}: not valid TOML: {exc}"]) from exc
    lines = [n for n, line in enumerate(text.splitlines(), 1) if _PRODUCTS_HEADER.match(line)]
    errors = [f"{origin}:1: {key}: unknown key" for key in sorted(document.keys() - {"products"})]
    rows = document.get("products", [])
    if not isinstance(rows, list):
        raise CatalogError(origin, [*errors, f"{origin}:1: products: must be [[products]] tables"])
    entries = []
    for index, row in enumerate(rows):
        line = lines[index] if index < len(lines) else 1
        entries.append((f"{origin}:{line}: products[{index}]", row))
    return _build(entries, origin, digest(data), errors)


def parse_csv(data: bytes, origin: str) -> Catalog:
    """A header row (``sku,name,unit_grams,...,price_VND``), then one product per row."""
    reader = csv.DictReader(io.StringIO(_text(data, origin), newline=""), restkey="\x00extra")
    header = reader.fieldnames or []
    errors = []
    prices = {}
    for column in header:
        key = column.strip()
        match = _PRICE_COLUMN.fullmatch(key)
        if match:
            prices[column] = match["currency"].upper()
        elif key not in FIELDS - {"prices"}:
            errors.append(f"{origin}:1: {key or '(empty)'}: unknown column")
    entries = []
    try:
        for row in reader:
            where = f"{origin}:{reader.line_num}"
            if "\x00extra" in row:
                errors.append(f"{where}: more cells than the header has columns")
                continue
            entries.append((where, _csv_product(row, prices)))
    except csv.Error as exc:
        errors.append(f"{origin}:{reader.line_num}: not valid CSV: {exc}")
    if not header:
        errors.append(f"{origin}:1: no header row")
    return _build(entries, origin, digest(data), errors)


def _csv_product(row: dict[str, str | None], prices: dict[str, str]) -> dict[str, object]:
    """A CSV row as the TOML table it stands for: empty cells are absent, numbers parsed."""
    product: dict[str, object] = {}
    table: dict[str, object] = {}
    for column, cell in row.items():
        value = (cell or "").strip()
        if not value:
            continue
        if column in prices:
            table[prices[column]] = _integer(value)
        elif column.strip() == "aliases":
            product["aliases"] = [alias.strip() for alias in value.split(";") if alias.strip()]
        elif column.strip() in ("unit_grams", "stock_units", "stock_grams"):
            product[column.strip()] = _integer(value)
        else:
            product[column.strip()] = value
    if table:
        product["prices"] = table
    return product


def _integer(value: str) -> object:
    """A cell as an integer when it is one ("5000", "5_000" is not), else as it is."""
    return int(value) if re.fullmatch(r"[0-9]{1,19}", value) else value


def _build(
    entries: Sequence[tuple[str, object]], origin: str, version: str, errors: list[str]
) -> Catalog:
    if len(entries) > MAX_PRODUCTS:
        errors.append(f"{origin}: {len(entries)} products, more than {MAX_PRODUCTS}")
        raise CatalogError(origin, errors)
    products = []
    codes: dict[str, str] = {}
    """Every SKU and alias, folded, -> where it was first given."""
    for where, row in entries:
        product = _product(where, row, errors)
        if product is None:
            continue
        for code in (product.sku, *product.aliases):
            key = fold(code)
            if key in codes and codes[key] != where:
                errors.append(f"{where}: {code!r} is already used at {codes[key]}")
            codes.setdefault(key, where)
        products.append(product)
    if not entries and not errors:
        errors.append(f"{origin}: no products")
    if errors:
        raise CatalogError(origin, errors)
    return Catalog(tuple(products), version)


def fold(code: str) -> str:
    """A code or alias as compared for uniqueness: case, spaces and diacritics ignored."""
    decomposed = unicodedata.normalize("NFD", code.casefold().replace("đ", "d"))
    return "".join(c for c in decomposed if not unicodedata.combining(c) and not c.isspace())


def _product(where: str, row: object, errors: list[str]) -> Product | None:
    """One product, or None after adding its problems to ``errors``."""
    if not isinstance(row, dict):
        errors.append(f"{where}: must be a table")
        return None
    found: list[str] = []

    def bad(field: str, message: str) -> None:
        found.append(f"{where}: {field}: {message}")

    for key in sorted(row.keys() - FIELDS):
        bad(key, "unknown key")
    sku = row.get("sku")
    if not isinstance(sku, str) or not _SKU.fullmatch(sku):
        bad("sku", f"required, letters, digits, '.', '_' or '-' (at most 32), got {sku!r}")
    name = row.get("name")
    if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME:
        bad("name", f"required, at most {MAX_NAME} characters")
    unit = _unit(row.get("unit_grams"), bad)
    stock = _stock(row, unit, bad)
    aliases = _aliases(row.get("aliases", []), bad)
    prices = _prices(row.get("prices", {}), bad)
    errors += found
    if found:
        return None
    assert isinstance(sku, str)
    assert isinstance(name, str)
    return Product(sku.upper(), name.strip(), aliases, unit, prices, stock)


def _unit(value: object, bad: Callable[[str, str], None]) -> int | None:
    if value == KG:
        return None
    if type(value) is not int or not 0 < value <= MAX_UNIT_GRAMS:
        bad("unit_grams", f'required, grams of one unit (1 to {MAX_UNIT_GRAMS}) or "kg"')
        return 0
    return value


def _stock(row: dict[str, object], unit: int | None, bad: Callable[[str, str], None]) -> int | None:
    units, grams = row.get("stock_units"), row.get("stock_grams")
    if units is not None and grams is not None:
        bad("stock_units", "give stock_units or stock_grams, not both")
        return None
    if grams is not None:
        if type(grams) is not int or not 0 <= grams <= MAX_STOCK_GRAMS:
            bad("stock_grams", f"an integer from 0 to {MAX_STOCK_GRAMS}")
            return None
        return grams
    if units is None:
        return None
    if unit is None:
        bad("stock_units", "a product sold by the kg has its stock in stock_grams")
    elif type(units) is not int or not 0 <= units * max(unit, 1) <= MAX_STOCK_GRAMS:
        bad("stock_units", f"an integer from 0, at most {MAX_STOCK_GRAMS} grams in all")
    else:
        return units * unit
    return None


def _aliases(value: object, bad: Callable[[str, str], None]) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ALIASES:
        bad("aliases", f"a list of at most {MAX_ALIASES} strings")
        return ()
    aliases = []
    for alias in value:
        if not isinstance(alias, str) or not 0 < len(alias.strip()) <= MAX_ALIAS:
            bad("aliases", f"{alias!r}: each a text of 1 to {MAX_ALIAS} characters")
        else:
            aliases.append(alias.strip())
    return tuple(aliases)


def _prices(value: object, bad: Callable[[str, str], None]) -> dict[str, int]:
    if not isinstance(value, dict):
        bad("prices", "a table of currency = minor units")
        return {}
    prices = {}
    for currency, minor in value.items():
        field = f"prices.{currency}"
        try:
            exponent(currency)
        except MoneyError:
            bad(field, "not an ISO 4217 currency code")
            continue
        if type(minor) is not int or not 0 <= minor <= MAX_AMOUNT:
            bad(field, f"an integer number of minor units, 0 to {MAX_AMOUNT}, got {minor!r}")
            continue
        prices[currency] = minor
    return prices
