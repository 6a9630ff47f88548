"""Critique metrics (relevance AUC and balanced accuracy, retrieval-need AUC) and observed sweep thresholds."""

from __future__ import annotations

import random

import pytest

from openrag.eval.critique import auc, relevance_metrics, retrieval_need_auc
from openrag.eval.runner import summarize
from openrag.eval.sweep import observed_thresholds, sweep


def pairwise_auc(scores, positive):
    """The definition, pair by pair: positive above negative 1, tie 1/2."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_definition_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(30)]
        labels = [rng.random() < 0.4 for _ in range(30)]
        if any(labels) and not all(labels):
            assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels))
    assert auc([0.2, 0.9], [False, True]) == 1.0 and auc([0.9, 0.2], [False, True]) == 0.0
    assert auc([0.5, 0.5], [True, True]) is None


def cand(relevance, gold):
    return {"relevance": relevance, "passage": {"title": "t", "text": "x", "is_gold": gold}}


def test_relevance_metrics_by_hand():
    records = [
        {"candidates": [cand(0.9, True), cand(0.8, False), cand(0.3, False)]},
        {"candidates": [cand(0.4, True), cand(0.2, False), cand(0.7, None)]},  # no flag: not judged
    ]
    m = relevance_metrics(records)
    assert m["relevance_n"] == 5
    # > 0.5 said relevant: 0.9 (gold, right), 0.8 (non-gold, wrong), 0.3 (right), 0.4 (gold, wrong), 0.2 (right)
    assert m["relevance_accuracy"] == pytest.approx(3 / 5)
    assert m["relevance_balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # gold 0.9, 0.4 against non-gold 0.8, 0.3, 0.2: 0.9 beats 3, 0.4 beats 2 -> 5 / 6
    assert m["relevance_auc"] == pytest.approx(5 / 6)
    assert relevance_metrics([{"candidates": []}])["relevance_auc"] is None


def sweep_record(em_retrieval, em_no, p, minp=0.5):
    return {"id": "q", "metrics": {"em": em_retrieval}, "retrieved": True,
            "no_retrieval": {"prediction": "y", "p_retrieve": p, "minp": minp, "meanp": minp, "metrics": {"em": em_no}}}


def test_retrieval_need_auc_and_summary_keys():
    records = [sweep_record(1, 0, 0.99), sweep_record(1, 1, 0.97), sweep_record(0, 0, 0.98), sweep_record(0, 1, 0.96)]
    # wrong without retrieval: 0.99, 0.98; right: 0.97, 0.96 -> every pair ordered -> 1.0
    assert retrieval_need_auc(records, "em") == {"retrieval_need_auc": 1.0, "retrieval_need_n": 4}
    summary = summarize(records, "hotpotem")
    assert summary["retrieval_need_auc"] == 1.0 and "relevance_auc" in summary
    assert "retrieval_need_auc" not in summarize([{"metrics": {"em": 1.0, "f1": 1.0}, "retrieved": True}], "hotpotem")  # not a sweep


def test_observed_thresholds_draw_a_curve_inside_a_narrow_range():
    values = [0.96 + 0.0003 * i for i in range(100)]  # every share between 0.96 and 0.99, as the issue measured
    records = [sweep_record(1.0, 0.0, p) for p in values]
    grid = observed_thresholds(records, "token")
    assert len(grid) == 9 and all(0.96 <= t <= 0.99 for t in grid)
    token = [p for p in sweep(records, ["token"], thresholds=[0.0, 0.5, 0.95, 1.0]) if p.rule == "token"]
    frequencies = sorted({round(p.retrieval_frequency, 2) for p in token})
    assert len(frequencies) >= 10  # 0 and 1 from the fixed grid, the deciles in between
    fixed_only = [p for p in sweep(records, ["token"], thresholds=[0.0, 0.5, 0.95, 1.0], observed=False) if p.rule == "token"]
    assert sorted({p.retrieval_frequency for p in fixed_only}) == [0.0, 1.0]
