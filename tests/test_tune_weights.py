"""scripts/tune_weights.py: answers are re-chosen under the weighted candidate score (docs/method.md section 6);
the best setting is found on the tuning file."""

from __future__ import annotations

import json

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def tune():
    return load_script("tune_weights")


def candidate(text, relevance, groundedness, utility, seq_score):
    return {"text": text, "relevance": relevance, "groundedness": groundedness, "utility": utility, "seq_score": seq_score}


# Question 0: "Paris" wins on relevance, "London" on support, utility and sequence score.
# Evaluation's weights (1, 1, .5, on): Paris .9 + .5 + .25 + .2 = 1.85; London .1 + 1 + .5 + .9 = 2.5 -> London (wrong).
# Question 1: both candidates alike except relevance (.6 for "no", .5 for "yes") and sequence score (.5 vs .8).
# Evaluation's weights: no .6 + .5 + .25 + .5 = 1.85; yes .5 + .5 + .25 + .8 = 2.05 -> yes (right).
RECORDS = [
    {"index": 0, "id": "a", "answers": ["Paris"], "metrics": {"em": 0.0},
     "candidates": [candidate("Paris", 0.9, 0.5, 0.5, 0.2), candidate("London", 0.1, 1.0, 1.0, 0.9)]},
    {"index": 1, "id": "b", "answers": ["yes"], "metrics": {"em": 1.0},
     "candidates": [candidate("no", 0.6, 0.5, 0.5, 0.5), candidate("yes", 0.5, 0.5, 0.5, 0.8)]},
]


def test_the_evaluation_weights_reproduce_the_recorded_answers(tune):
    em, _ = tune.rescored(RECORDS, tune.EVAL_WEIGHTS, "hotpotem", closed=False)
    assert em == pytest.approx(50.0)
    assert tune.recorded(RECORDS) == pytest.approx(50.0)
    assert tune.oracle(RECORDS, "hotpotem") == pytest.approx(100.0)


def test_other_weights_choose_other_answers(tune):
    # relevance only (w_sup = w_use = 0, no sequence score): Paris (.9 > .1) right, "no" (.6 > .5) wrong
    assert tune.rescored(RECORDS, (1.0, 0.0, 0.0, False), "hotpotem", closed=False)[0] == pytest.approx(50.0)
    # relevance 4x beside the rest: Paris 3.6 + .5 + .25 + .2 = 4.55 > London .4 + 1 + .5 + .9 = 2.8 (right);
    # no 2.4 + .5 + .25 + .5 = 3.65 > yes 2.0 + .5 + .25 + .8 = 3.55 (wrong)
    assert tune.rescored(RECORDS, (4.0, 1.0, 0.5, True), "hotpotem", closed=False)[0] == pytest.approx(50.0)
    # relevance 2x, sequence score on, no support: Paris 1.8 + .25 + .2 = 2.25 > London .2 + .5 + .9 = 1.6 (right);
    # no 1.2 + .25 + .5 = 1.95 < yes 1.0 + .25 + .8 = 2.05 (right)
    assert tune.rescored(RECORDS, (2.0, 0.0, 0.5, True), "hotpotem", closed=False)[0] == pytest.approx(100.0)


def test_pooling_sums_the_scores_of_identical_answers(tune, tmp_path, capsys):
    # relevance only: "A" .9 alone beats each "B" (.5), but the two "B" candidates pooled (1.0) beat it
    record = {"index": 0, "id": "c", "answers": ["B"], "metrics": {"em": 0.0},
              "candidates": [candidate("A", 0.9, 0, 0, 0), candidate("B", 0.5, 0, 0, 0), candidate("B", 0.5, 0, 0, 0)]}
    assert tune.rescored([record], (1.0, 0.0, 0.0, False), "hotpotem", closed=False)[0] == pytest.approx(0.0)
    assert tune.rescored([record], (1.0, 0.0, 0.0, False), "hotpotem", closed=True)[0] == pytest.approx(100.0)
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    first.write_text(json.dumps(record) + "\n")
    second.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    tune.main([str(first), str(second), "--top", "1"])  # two tuning files read as one set of 3 questions
    out = capsys.readouterr().out
    assert "3 questions, its answers' EM 33.3, oracle EM 100.0" in out
    assert "| yes | 100.0 |" in out  # the best setting pools


def test_main_reports_the_best_setting_on_held_out_files(tune, tmp_path, capsys):
    path = tmp_path / "train.sweep.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    tune.main([str(path), "--apply", str(path), "--top", "1"])
    out = capsys.readouterr().out
    assert "its answers' EM 50.0, oracle EM 100.0" in out
    assert "EM/F1 100.0/100.0" in out.splitlines()[-1]  # the tuned setting, applied


def test_a_file_without_candidates_is_refused(tune, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"index": 0, "answers": ["x"], "metrics": {"em": 0.0}}) + "\n")
    with pytest.raises(SystemExit, match="openrag eval sweep"):
        tune.main([str(path)])


def test_missing_files_and_records_without_score_terms_are_refused(tune, tmp_path):
    with pytest.raises(SystemExit, match="no file at"):
        tune.main([str(tmp_path / "absent.jsonl")])
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"index": 0, "id": "a", "answers": ["x"], "metrics": {"em": 0.0}, "candidates": [{"text": "x"}]}) + "\n")
    with pytest.raises(SystemExit, match="candidate score terms"):
        tune.main([str(path)])
