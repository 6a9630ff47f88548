"""scripts/held_out_rows.py: a build's held-out questions found again in its input files, by question text."""

from __future__ import annotations

import json

import pytest

from .conftest import load_script


def instance(question: str) -> dict:
    return {"instruction": "", "conversation": [{"input": question, "output": "[Retrieval]<paragraph>...</paragraph>x"}]}


def test_the_held_out_rows_are_written_per_input(tmp_path, capsys):
    held = tmp_path / "train.held_out.jsonl"
    held.write_text("".join(json.dumps(instance(q)) + "\n" for q in ["Who wrote Hamlet?", "Who wrote Hamlet?", "Sub-question?"]))
    listed = tmp_path / "train100.json"  # a JSON list, HotpotQA's field names
    listed.write_text(json.dumps([{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}, {"question": "Other?", "answer": "x"}]))
    lines = tmp_path / "dev.jsonl"  # JSON lines, IRCoT's field names
    lines.write_text(json.dumps({"question_text": "Other?"}) + "\n" + json.dumps({"question_text": " Who wrote Hamlet? "}) + "\n")
    load_script("held_out_rows").main([str(held), str(listed), str(lines), "--output_dir", str(tmp_path / "out")])
    assert [json.loads(x)["answer"] for x in (tmp_path / "out" / "train100.jsonl").read_text().splitlines()] == ["Shakespeare"]
    assert [json.loads(x) for x in (tmp_path / "out" / "dev.jsonl").read_text().splitlines()] == [{"question_text": " Who wrote Hamlet? "}]
    assert "1 held-out questions found (2 distinct instance inputs" in capsys.readouterr().out


def test_a_file_that_is_not_a_held_out_file_is_refused(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(SystemExit, match="line 1 is not a training instance"):
        load_script("held_out_rows").main([str(rows), str(rows), "--output_dir", str(tmp_path / "out")])


def test_a_missing_input_is_named_before_anything_is_written(tmp_path):
    held = tmp_path / "train.held_out.jsonl"
    held.write_text(json.dumps(instance("Q?")) + "\n")
    with pytest.raises(SystemExit, match="no data file at .*absent.json"):
        load_script("held_out_rows").main([str(held), str(tmp_path / "absent.json"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
