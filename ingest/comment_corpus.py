"""The labelled comment corpus and the parser's measured quality on it.

``python -m ingest.comment_corpus --catalog tests/data/comment_orders_catalog.toml
tests/data/comment_orders*.tsv`` prints precision and recall: of all the files together, of the
part used while tuning and of the held-out part, then of each file. The corpus format is
described at the top of each file.

An intent is an order (SKU and quantity) or a withdrawal (SKU, or none); a predicted intent is
right only if it equals an expected one, so a wrong quantity is both a miss and a false positive.
Comments labelled ambiguous are left out of the score; ambiguous predictions are not intents.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import tomllib
from collections.abc import Iterable, Sequence, Set
from pathlib import Path

from ingest.comment_orders import CommentParser, Intent, OrderIntent, Withdrawal

AMBIGUOUS = "?"
NONE = "-"


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogProduct:
    """A product of the corpus's catalog file (the shape the parser's protocol asks for)."""

    sku: str
    aliases: tuple[str, ...] = ()
    unit_grams: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Labelled:
    where: str
    """file:line"""
    text: str
    expected: frozenset[Intent] | None
    """None: a seller could not decide (ambiguous)."""
    phone: bool

    @property
    def held_out(self) -> bool:
        """One line in five, by a hash of its text: never looked at while tuning."""
        return hashlib.sha1(self.text.encode()).digest()[-1] % 5 == 0


def load_catalog(path: Path) -> list[CatalogProduct]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [
        CatalogProduct(item["sku"], tuple(item.get("aliases", ())), item.get("unit_grams"))
        for item in data["product"]
    ]


def _intent(label: str) -> Intent:
    if label.startswith("!"):
        return Withdrawal(None if label == "!*" else label[1:])
    sku, quantity = label.split(":")
    return OrderIntent(sku, int(quantity))


def load_corpus(path: Path) -> list[Labelled]:
    corpus = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, phone, text = line.split("\t")
        expected = (
            None
            if label == AMBIGUOUS
            else frozenset()
            if label == NONE
            else frozenset(_intent(part) for part in label.split())
        )
        where = f"{path.name}:{number}"
        corpus.append(Labelled(where, text.replace("\\n", "\n"), expected, phone == "p"))
    return corpus


@dataclasses.dataclass(slots=True)
class Tally:
    expected: int = 0
    predicted: int = 0
    right: int = 0

    @property
    def precision(self) -> float:
        return self.right / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.expected if self.expected else 1.0

    def add(self, expected: Set[Intent], got: Set[Intent]) -> None:
        self.expected += len(expected)
        self.predicted += len(got)
        self.right += len(got & expected)


@dataclasses.dataclass(slots=True)
class Score(Tally):
    comments: int = 0
    scored: int = 0
    phone_right: int = 0
    orders: Tally = dataclasses.field(default_factory=Tally)
    withdrawals: Tally = dataclasses.field(default_factory=Tally)
    errors: list[str] = dataclasses.field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.comments} comments, {self.scored} scored, "
            f"{self.expected} expected intents, {self.predicted} predicted, {self.right} right: "
            f"precision {self.precision:.3f}, recall {self.recall:.3f}; "
            f"orders {self.orders.precision:.3f}/{self.orders.recall:.3f}, "
            f"withdrawals {self.withdrawals.precision:.3f}/{self.withdrawals.recall:.3f}; "
            f"phone {self.phone_right}/{self.comments}"
        )


def score(corpus: Iterable[Labelled], parser: CommentParser) -> Score:
    """Precision and recall of every intent, then of orders and of withdrawals apart."""
    result = Score()
    for item in corpus:
        parsed = parser.parse(item.text)
        result.comments += 1
        result.phone_right += parsed.has_phone == item.phone
        if parsed.has_phone != item.phone:
            result.errors.append(f"{item.where}: phone {parsed.has_phone}: {item.text!r}")
        if item.expected is None:
            continue
        result.scored += 1
        got = {i for i in parsed.intents if isinstance(i, OrderIntent | Withdrawal)}
        expected = set(item.expected)
        result.add(expected, got)
        for kind, tally in ((OrderIntent, result.orders), (Withdrawal, result.withdrawals)):
            tally.add(
                {i for i in expected if isinstance(i, kind)},
                {i for i in got if isinstance(i, kind)},
            )
        if got != expected:
            result.errors.append(f"{item.where}: got {sorted(map(str, got))}: {item.text!r}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("corpus", type=Path, nargs="+", help="labelled comment files (.tsv)")
    args.add_argument("--catalog", type=Path, required=True, help="the products (TOML)")
    args.add_argument("--errors", choices=("tuning", "all"), help="also list the mistakes")
    options = args.parse_args(argv)
    files = {path.name: load_corpus(path) for path in options.corpus}
    corpus = [item for items in files.values() for item in items]
    parser = CommentParser(load_catalog(options.catalog))
    parts = {
        "all": corpus,
        "tuning part": [item for item in corpus if not item.held_out],
        "held-out part": [item for item in corpus if item.held_out],
        **files,
    }
    for name, part in parts.items():
        print(score(part, parser).line(name))
    if options.errors:
        shown = corpus if options.errors == "all" else parts["tuning part"]
        print(*score(shown, parser).errors, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
