"""``openrag eval`` over a small fixture of every data format, with a fake answerer (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrag.eval.evaluate import evaluate
from openrag.eval.request import EvalRequest
from openrag.eval.runner import read_records

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")


def first_rows(path: Path, n: int = 3) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)[:n]
    return [json.loads(line) for line in text.splitlines()[:n]]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gold_answerer(req, both):
    """Answers every question with its first gold answer (the label for multiple choice); retrieves always."""

    def answer(batch):
        out = []
        for q in batch:
            gold = q.example.answer_key or q.example.answers[0]
            out.append({"prediction": gold, "retrieved": True, "candidates": [{"passage": {"title": p.title, "text": p.text}} for p in q.passages]})
        return out

    return answer, {"answerer": "gold"}


CASES = [
    # task, source file (or None for a synthetic row), ranked by
    ("hotpotqa", "hotpotqa/hotpotqa_dev_ircot500.jsonl", "bm25"),
    ("hotpotqa", "hotpotqa/hotpotqa_train100.json", "bm25"),
    ("musique", "musique/musique_dev200.jsonl", "bm25"),
    ("musique", "musique/musique_train100.json", "bm25"),
    ("2wikimultihopqa", "2wikimultihopqa/2wiki_dev200.jsonl", "bm25"),
    ("popqa", "popqa/popqa_longtail100_ctxs.jsonl", "given"),
    ("arc_c", "arc_challenge/arc_challenge100_ctxs.jsonl", "given"),
]


@pytest.mark.parametrize("task, name, ranked_by", CASES, ids=[c[1].split("/")[-1] for c in CASES])
def test_every_shared_format(tmp_path, task, name, ranked_by):
    source = DATA / name
    if not source.is_file():
        pytest.skip(f"{source} is not here")
    rows = first_rows(source)
    fixture = tmp_path / Path(name).name
    fixture.write_text(json.dumps(rows) if source.read_text().lstrip().startswith("[") else "".join(json.dumps(r) + "\n" for r in rows))
    req = EvalRequest(task=task, dataset=str(fixture), output_file=tmp_path / "out.jsonl", ndocs=3, progress=False)
    summary = evaluate(req, gold_answerer)
    records = read_records(tmp_path / "out.jsonl")
    assert summary["n"] == len(records) == 3 and summary["skipped"] == 0
    headline = {"hotpotem": "em", "match": "match", "accuracy": "accuracy"}[req.metric]
    assert summary[headline] == 1.0  # the gold answer scores full marks through the whole path
    assert all(r["ranked_by"] == ranked_by and len(r["candidates"]) == 3 for r in records)
    if ranked_by == "bm25":  # unranked candidates: the gold recall of the BM25 ranking at ndocs is reported
        assert all(0.0 <= r["gold_recall"] <= 1.0 for r in records) and summary["gold_recall_n"] == 3
    else:
        assert summary["gold_recall"] is None


def test_bench_schema_and_single_hop_tasks(tmp_path):
    bench = write_jsonl(tmp_path / "bench.jsonl", [
        {"question": "Who wrote Hamlet?", "answer": "William Shakespeare", "top_contexts": [{"text": "Hamlet is a play by William Shakespeare."}, {"title": "X", "text": "Other."}]},
        {"question": "Capital of France?", "answers": ["Paris"], "ctxs": [{"title": "France", "text": "Paris is the capital."}]},
    ])
    health = write_jsonl(tmp_path / "health.jsonl", [{"question": "Vitamin C cures colds.", "answers": ["false"], "ctxs": []}])
    trivia = write_jsonl(tmp_path / "trivia.jsonl", [{"question": "Who painted the Mona Lisa?", "answers": ["Leonardo da Vinci", "Leonardo"], "ctxs": [{"title": "Mona Lisa", "text": "by Leonardo"}]}])
    for task, path, n in (("hotpotqa", bench, 2), ("pubhealth", health, 1), ("triviaqa", trivia, 1)):
        summary = evaluate(EvalRequest(task=task, dataset=str(path), output_file=tmp_path / f"{task}.jsonl", progress=False), gold_answerer)
        assert summary["n"] == n and summary["task"] == task
        assert json.loads((tmp_path / f"{task}.metrics.json").read_text())["n"] == n


def test_bad_rows_are_named_counted_and_skipped(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"question": "Q1?", "answers": ["a"], "ctxs": []}) + "\n"
        + json.dumps({"question": "Q2 without answers", "ctxs": []}) + "\n"
        + "{not json\n"
        + json.dumps({"answers": ["b"], "ctxs": [], "id": "noq"}) + "\n"
        + json.dumps({"question": "Q5?", "answers": ["c"], "ctxs": []}) + "\n"
    )
    summary = evaluate(EvalRequest(task="popqa", dataset=str(path), output_file=tmp_path / "o.jsonl", progress=False), gold_answerer)
    assert summary["n"] == 2 and summary["skipped"] == 3
    assert summary["skipped_by_field"] == {"answers": 1, "json": 1, "question": 1}
    assert "skipped 3 bad rows" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'answers'"):
        evaluate(EvalRequest(task="popqa", dataset=str(path), output_file=tmp_path / "s.jsonl", strict=True, progress=False), gold_answerer)


def test_unknown_task_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nq'"):
        EvalRequest(task="nq", dataset="x.jsonl")
    with pytest.raises(ValueError, match="no official dataset"):
        EvalRequest(task="popqa")
    with pytest.raises(FileNotFoundError, match="no data file"):
        evaluate(EvalRequest(task="popqa", dataset=str(tmp_path / "missing.jsonl"), output_file=tmp_path / "o.jsonl", progress=False), gold_answerer)
