"""scripts/model_table.py: the adaptive threshold of each half is chosen on the other half."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "model_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("model_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(index, p_retrieve, em_with, em_without, question="Who?", answers=("Ann",)):
    return {"index": index, "id": str(index), "question": question, "answers": list(answers),
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


def test_retrieval_decision_accuracies(table):
    records = [record(0, 0.9, 1, 0), record(1, 0.2, 0, 1), record(2, 0.4, 1, 0, question="Is it red or blue?", answers=("red",))]
    by_rule, by_need = table.retrieval_decisions(records)
    assert by_rule == pytest.approx(1 / 2)  # question 2 names its answer: closed-class, not counted
    assert by_need == pytest.approx(2 / 3)  # 0 retrieves and needed to; 1 did not and did not need to; 2 needed to
