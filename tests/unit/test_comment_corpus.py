"""The comment-order parser measured on the committed, hand-labelled corpus (issue 14):
precision ≥ 0.97 and recall ≥ 0.90 per intent (SKU and quantity must both match)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.comment_corpus import Labelled, Score, load_catalog, load_corpus, main, score
from ingest.comment_orders import CommentParser, OrderIntent, Withdrawal

DATA = Path(__file__).resolve().parents[1] / "data"
CATALOG = DATA / "comment_orders_catalog.toml"
FILES = tuple(DATA / f"comment_orders{part}.tsv" for part in ("", "_blind", "_blind2", "_blind3"))
PARSER = CommentParser(load_catalog(CATALOG))


@pytest.fixture(scope="module")
def corpus() -> list[Labelled]:
    return [item for path in FILES for item in load_corpus(path)]


def report(name: str, result: Score) -> None:
    print(result.line(name))


def test_the_corpus_is_large_varied_and_labelled(corpus: list[Labelled]) -> None:
    texts = [item.text for item in corpus]
    assert len(texts) >= 500
    assert len(set(texts)) == len(texts), "every comment once"
    expected = [item.expected for item in corpus]
    assert sum(e is None for e in expected) >= 20, "ambiguous comments are labelled as such"
    assert sum(e == frozenset() for e in expected) >= 200, "and comments that are no intent"
    intents = [i for e in expected if e for i in e]
    assert sum(isinstance(i, Withdrawal) for i in intents) >= 30
    assert sum(isinstance(i, OrderIntent) and i.sku == "VK" for i in intents) >= 30
    assert sum(item.phone for item in corpus) >= 50
    assert 0.1 < sum(item.held_out for item in corpus) / len(corpus) < 0.3


def test_precision_and_recall_on_the_whole_corpus(corpus: list[Labelled]) -> None:
    result = score(corpus, PARSER)
    report("whole corpus", result)
    assert result.scored >= 500
    assert result.precision >= 0.97, result.errors
    assert result.recall >= 0.90, result.errors
    for kind in (result.orders, result.withdrawals):
        assert kind.expected >= 30
        assert kind.precision >= 0.97, result.errors
        assert kind.recall >= 0.90, result.errors


@pytest.mark.parametrize("held_out", [False, True])
def test_precision_and_recall_on_each_part(corpus: list[Labelled], held_out: bool) -> None:
    result = score([item for item in corpus if item.held_out == held_out], PARSER)
    report("held-out part" if held_out else "tuning part", result)
    assert result.precision >= 0.97, result.errors
    assert result.recall >= 0.90, result.errors


def test_phone_presence_is_right_on_every_comment(corpus: list[Labelled]) -> None:
    result = score(corpus, PARSER)
    assert result.phone_right == result.comments, result.errors


def test_a_wrong_quantity_is_a_miss_and_a_false_positive(tmp_path: Path) -> None:
    corpus_file = tmp_path / "c.tsv"
    corpus_file.write_text("VT05:3\t.\tVT05 x2\n-\t.\tVT02\n?\t.\tVT02 5kg\n", encoding="utf-8")
    result = score(load_corpus(corpus_file), PARSER)
    assert (result.scored, result.expected, result.predicted, result.right) == (2, 1, 2, 0)
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_the_score_command_prints_every_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--catalog", str(CATALOG), *map(str, FILES)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "all",
        "tuning part",
        "held-out part",
        "comment_orders.tsv",
        "comment_orders_blind.tsv",
        "comment_orders_blind2.tsv",
        "comment_orders_blind3.tsv",
    ]
    assert all(re.search(r"precision [01]\.\d{3}, recall [01]\.\d{3}", line) for line in lines)
