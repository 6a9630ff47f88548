"""scripts/compare_evals.py: two eval runs of the same questions, row by row."""

from __future__ import annotations

import json

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def ce():
    return load_script("compare_evals")


def row(key, prediction, em, retrieved, relevance, retrieval_value=None, title="Paris"):
    cand = {"passage": {"title": title, "text": "..."}, "text": prediction, "relevance": relevance,
            "groundedness": 0.5, "utility": 0.5}
    return {"id": key, "prediction": prediction, "retrieved": retrieved, "metrics": {"em": em},
            "retrieval_value": retrieval_value, "candidates": [cand] if retrieved else []}


def test_counts_and_differences_worked_by_hand(ce):
    a = [row("q1", "Paris", 1.0, True, 0.80, 0.7), row("q2", "Lyon", 0.0, True, 0.40, 0.6),
         row("q3", "Nice", 0.0, False, None, 0.2), row("q4", "x", 0.0, True, 0.5)]
    b = [row("q1", "Paris", 1.0, True, 0.75, 0.65), row("q2", "Paris", 1.0, True, 0.50, 0.6),
         row("q3", "Nice", 0.0, True, 0.30, 0.55), row("q5", "y", 0.0, True, 0.5)]
    r = ce.compare(a, b)
    assert (r["matched"], r["only_first"], r["only_second"]) == (3, 1, 1)
    assert r["same_answer"] == 2 and r["same_retrieval"] == 2 and r["retrieved"] == [2, 3]
    assert r["em"] == pytest.approx([100 / 3, 200 / 3]) and r["em_changed"] == 1
    assert (r["candidates"], r["same_candidate_text"]) == (2, 1)  # q3 had no candidate in the first run
    assert r["moved"]["relevance"]["max"] == pytest.approx(0.10)
    assert r["moved"]["relevance"]["mean"] == pytest.approx(0.075)
    assert r["moved"]["retrieval_value"]["max"] == pytest.approx(0.35)
    assert r["moved"]["groundedness"]["max"] == 0


def test_candidates_of_different_passages_are_not_compared(ce):
    r = ce.compare([row("q", "a", 0.0, True, 0.9)], [row("q", "a", 0.0, True, 0.1, title="Lyon")])
    assert r["candidates"] == 0 and r["moved"]["relevance"]["n"] == 0


def test_command_line_names_a_missing_file(ce, tmp_path, capsys):
    assert ce.main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 2
    assert "a.jsonl" in capsys.readouterr().err


def test_command_line_writes_json(ce, tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(row("q", "Paris", 1.0, True, 0.8)) + "\n")
    b.write_text(json.dumps(row("q", "Lyon", 0.0, True, 0.6)) + "\n")
    assert ce.main([str(a), str(b), "--json", str(tmp_path / "c.json")]) == 0
    assert "same answer 0/1" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["em"] == [100.0, 0.0]


def test_command_line_names_a_malformed_file_and_a_missing_field(ce, tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(row("q", "Paris", 1.0, True, 0.8)) + "\nnot json\n")
    b.write_text(json.dumps({"id": "q", "retrieved": True}) + "\n")
    assert ce.main([str(a), str(b)]) == 2
    assert "a.jsonl:2" in capsys.readouterr().err
    a.write_text(json.dumps(row("q", "Paris", 1.0, True, 0.8)) + "\n")
    assert ce.main([str(a), str(b)]) == 2
    assert "'prediction'" in capsys.readouterr().err
