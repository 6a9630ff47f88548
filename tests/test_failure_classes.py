"""scripts/failure_classes.py: wrong answers to questions whose answer was shown, sorted into classes."""

from __future__ import annotations

import json

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def fc():
    return load_script("failure_classes")


PARIS = ("Paris", "Paris is the capital of France. Its mayor is Anne Hidalgo.")
LYON = ("Lyon", "Lyon is the third city of France, on the Rhone.")
NOVEL = ("The Novel", "The Novel was written by John Smith in 1901.")
SMITH = ("John Smith", "John Smith was born in Dublin and died in 1950.")
JOHN = ("John", "John is a given name.")


def candidate(passage, text, score):
    title, body = passage
    return {"passage": {"title": title, "text": body}, "text": text, "score": score}


def record(question, answers, *candidates):
    best = max(candidates, key=lambda c: c["score"])
    return {"question": question, "answers": answers, "prediction": best["text"], "candidates": list(candidates)}


# Each record's class, worked out by hand from the definitions of the script's docstring.
CASES = [
    ("chosen over a right candidate",
     record("Who is the mayor of the capital of France?", ["Anne Hidalgo"],
            candidate(PARIS, "Anne Hidalgo", 0.4), candidate(LYON, "Lyon", 0.9))),
    ("the other compared option",  # a title too, so without its class it would count as a bridge
     record("Which city is the capital of France, Paris or Lyon?", ["Paris"],
            candidate(PARIS, "Lyon", 0.2), candidate(LYON, "Lyon", 0.8))),
    ("bridge entity",  # the bridge's own page, which holds the answer
     record("Where was the author of The Novel born?", ["Dublin"],
            candidate(NOVEL, "John Smith", 0.9), candidate(SMITH, "1950", 0.3))),
    ("bridge entity",  # repeats the entity the question starts from
     record("Where was the author of The Novel born?", ["Dublin"],
            candidate(SMITH, "The Novel", 0.9), candidate(NOVEL, "1901", 0.3))),
    ("answer from the wrong passage",
     record("In which city was the author of The Novel born?", ["Dublin"],
            candidate(NOVEL, "1901", 0.9), candidate(SMITH, "1950", 0.3))),
    ("wrong span",  # "John" is a title but shares a word with the answer: a part of it, not a bridge
     record("Who wrote The Novel?", ["John Smith"],
            candidate(NOVEL, "John", 0.9), candidate(JOHN, "name", 0.3))),
    ("not in any shown passage",
     record("Where was the author of The Novel born?", ["Dublin"],
            candidate(SMITH, "Cork", 0.9), candidate(NOVEL, "1901", 0.3))),
    ("other",  # read from another passage than its own
     record("Where was the author of The Novel born?", ["Dublin"],
            candidate(SMITH, "Rhone", 0.9), candidate(LYON, "France", 0.3))),
]
RIGHT = record("Who wrote The Novel?", ["John Smith"], candidate(NOVEL, "John Smith", 0.9))
NOT_SHOWN = record("Where did John Smith study?", ["Trinity College"], candidate(SMITH, "Dublin", 0.9))


@pytest.mark.parametrize("expected, case", CASES, ids=[f"{i}-{c}" for i, (c, _) in enumerate(CASES)])
def test_each_failure_gets_its_class(fc, expected, case):
    assert fc.in_population(case)
    assert fc.failure_class(case) == expected


def test_right_answers_and_unshown_answers_are_not_failures_of_reading(fc):
    assert not fc.in_population(RIGHT)
    assert not fc.in_population(NOT_SHOWN)


def test_main_counts_the_classes_and_the_candidate_upper_bound(fc, tmp_path, capsys):
    records = [case for _, case in CASES] + [RIGHT, NOT_SHOWN]
    path = tmp_path / "hotpotqa.always.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fc.main([str(path), "--json", str(tmp_path / "out.json")])
    summary = json.loads((tmp_path / "out.json").read_text())[str(path)]
    assert (summary["questions"], summary["population"], summary["right_candidate"]) == (10, 8, 2)
    assert summary["classes"]["bridge entity"]["count"] == 2
    assert summary["classes"]["bridge entity"]["share"] == pytest.approx(0.25)
    assert summary["classes"]["wrong span"]["examples"] == [
        {"question": "Who wrote The Novel?", "gold": ["John Smith"], "prediction": "John", "passage": "The Novel"}]
    bridge = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bridge entity"))
    assert bridge.split() == ["bridge", "entity", "2", "(", "25%)"]
