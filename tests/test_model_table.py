"""scripts/model_table.py: the adaptive threshold of each half is chosen on the other half."""

from __future__ import annotations

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def table():
    return load_script("model_table")


def record(index, p_retrieve, em_with, em_without, question="Who?", answers=("Ann",)):
    return {"index": index, "id": str(index), "question": question, "answers": list(answers), "retrieved": True,
            "metrics": {"em": em_with, "f1": em_with},
            "no_retrieval": {"p_retrieve": p_retrieve, "minp": None, "meanp": None, "metrics": {"em": em_without, "f1": em_without}}}


def test_two_fold_thresholds_are_chosen_on_the_other_half(table):
    # first half: retrieving helps question 0 (p .9) and hurts question 1 (p .1): any t in [.1, .9) is best; .1 is
    # the first of the grid. Second half: no threshold separates them (the helped one has the lower p): 0 and 50%
    # retrieval tie at EM .5 and the tie goes to less retrieval (t = .7, the first with none).
    records = [record(0, 0.9, 1, 0), record(1, 0.1, 0, 1), record(2, 0.3, 1, 0), record(3, 0.7, 0, 1)]
    em, f1, freq, thresholds = table.cross_validated(records, "token")
    assert thresholds == [0.7, 0.1]
    # half 1 with .7: q0 retrieves (1), q1 does not (1); half 2 with .1: q2 retrieves (1), q3 retrieves (0)
    assert (em, freq) == (pytest.approx(0.75), pytest.approx(0.75))


def test_agreement_with_the_retrieval_labels(table):
    records = [record(0, 0.9, 1, 0), record(1, 0.2, 0, 1), record(2, 0.4, 1, 0, question="Is it red or blue?", answers=("red",))]
    # 0: open question, retrieves (agrees); 1: open question, does not retrieve (disagrees);
    # 2: names its answer, closed-class, labelled [No Retrieval], does not retrieve (agrees)
    assert table.label_agreement(records) == pytest.approx(2 / 3)


def test_quality_rows_and_missing_tasks(table, tmp_path):
    import json

    records = [record(0, 0.9, 1, 0), record(1, 0.2, 0, 1)]
    for r, gold in zip(records, (True, False)):
        r.update(retrieved=True, candidates=[{"relevance": 0.8 if gold else 0.3, "passage": {"is_gold": gold}},
                                             {"relevance": 0.6, "passage": {"is_gold": not gold}}])
    (tmp_path / "hotpotqa.sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    answers, quality = table.openrag_rows("m", tmp_path)
    assert [row[2] for row in answers] == ["-"] * 5 and [row[3] for row in answers] == ["-"] * 5  # MuSiQue, 2Wiki missing
    (row,) = quality
    # passages: (0.8 gold), (0.6 non-gold), (0.3 non-gold), (0.6 gold): > 0.5 right for 0.8, 0.3, 0.6 gold -> 3/4
    assert row[:3] == ["m", "HotpotQA", "75.0 (n=4)"] and row[3] == "75.0"  # gold 2/2, non-gold 1/2
    assert row[4] == f"{(1 + 0.5 + 1 + 1) / 4:.3f}"  # gold 0.8, 0.6 vs non-gold 0.6, 0.3
    assert row[6] == "1.000"  # q0 (p .9) is wrong without retrieval, q1 (p .2) right
    assert row[7] == "100.0 / 100.0 (50%)" and row[8] == "50.0 / 50.0 (100%)"
