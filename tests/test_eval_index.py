"""``openrag eval --index``: rows without passages answered from an index, retrieval_recall@K against hand-computed
values, and the question+answer query. Tiny random Llama on the bundled tokenizer; a BM25 index built here."""

from __future__ import annotations

import json

import pytest

from openrag.eval.answerer import answer_options, rag_answerer
from openrag.eval.evaluate import evaluate
from openrag.eval.request import EvalRequest
from openrag.eval.runner import read_records
from openrag.answer import AnswerOptions, OpenRAG
from openrag.passage import Passage
from openrag.retrieval import build_index, open_index


CORPUS = [{"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
          {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
          {"id": "owl", "title": "Owl", "text": "Owls are nocturnal birds of prey."}]
PARIS_Q, BERLIN_Q = "Which city is the capital of France?", "Which city is the capital of Germany?"


def row(qid, question, answer, gold, context=None):
    """A 2WikiMultihopQA row; without ``context`` like the 36 such rows of 2wiki_dev200.jsonl."""
    data = {"_id": qid, "type": "compositional", "question": question, "answer": answer,
            "supporting_facts": [[t, 0] for t in gold], "evidences": []}
    if context is not None:
        data["context"] = context
    return data


# Top-1 BM25 hit: Paris for PARIS_Q, Berlin for BERLIN_Q (asserted below). Recall@1 by hand:
# b: gold {Paris}, hit Paris -> 1;  c: gold {Owl, Berlin}, hit Berlin -> 1/2;  d: gold {Owl}, hit Berlin -> 0.
ROWS = [row("a", BERLIN_Q, "Berlin", ["Berlin"], context=[["Berlin", ["Berlin is the capital of Germany."]],
                                                          ["Owl", ["Owls hunt at night."]]]),
        row("b", PARIS_Q, "Paris", ["Paris"]),
        row("c", BERLIN_Q, "Berlin", ["Owl", "Berlin"]),
        row("d", BERLIN_Q, "Berlin", ["Owl"])]
RECALL = {"b": 1.0, "c": 0.5, "d": 0.0}


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_index")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    build_index(folder / "corpus.jsonl", folder / "index", show_progress=False)
    index = open_index(folder / "index")
    assert [hits[0].title for hits in index.search([PARIS_Q, BERLIN_Q], top_k=1)] == ["Paris", "Berlin"]
    return folder / "index"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "2wiki.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


class RecordingRetriever:
    """Returns the same passages for every query and remembers the queries."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def search(self, queries, top_k):
        self.calls.append(list(queries))
        return [[Passage(c["title"], c["text"], c["id"], 1.0) for c in CORPUS[:top_k]] for _ in queries]


def factory(tiny_pair, retriever):
    def make(req, both):
        rag = OpenRAG(*tiny_pair, AnswerOptions(**answer_options(req, both)), retriever=retriever)
        return rag_answerer(rag, both), {}

    return make


def request(data, out, **kw):
    options = {"mode": "always_retrieve", "max_new_tokens": 3, **kw.pop("options", {})}
    return EvalRequest(task="2wikimultihopqa", dataset=str(data), output_file=out, progress=False, ndocs=1,
                       batch_size=2, options=options, **kw)


def test_rows_without_passages_are_answered_from_the_index(tiny_pair, index_folder, data, tmp_path):
    without = evaluate(request(data, tmp_path / "no_index.jsonl"), factory(tiny_pair, None))
    assert without["n"] == 1 and without["skipped_by_field"] == {"context": 3}
    assert "retrieval_recall@1" not in without

    summary = evaluate(request(data, tmp_path / "a.jsonl", index=str(index_folder)), factory(tiny_pair, open_index(index_folder)))
    records = {r["id"]: r for r in read_records(tmp_path / "a.jsonl")}
    assert summary["n"] == 4 and summary["skipped"] == 0 and summary["retrieval_frequency"] == 1.0
    assert records["a"]["ranked_by"] == "bm25" and "query" not in records["a"] and "retrieval_recall@1" not in records["a"]
    assert [c["passage"]["title"] for c in records["b"]["candidates"]] == ["Paris"]
    assert {k: records[k]["retrieval_recall@1"] for k in RECALL} == RECALL
    assert {k: records[k]["query"] for k in RECALL} == {"b": PARIS_Q, "c": BERLIN_Q, "d": BERLIN_Q}
    assert summary["retrieval_recall@1"] == pytest.approx(0.5) and summary["retrieval_recall_n"] == 3
    assert summary["index"] == str(index_folder) and summary["passages"] == "from_data"


def test_from_index_searches_every_row(tiny_pair, index_folder, data, tmp_path):
    summary = evaluate(request(data, tmp_path / "a.jsonl", index=str(index_folder), passages="from_index"),
                       factory(tiny_pair, open_index(index_folder)))
    records = {r["id"]: r for r in read_records(tmp_path / "a.jsonl")}
    assert records["a"]["ranked_by"] == "index" and records["a"]["retrieval_recall@1"] == 1.0  # gold Berlin, hit Berlin
    assert summary["retrieval_recall@1"] == pytest.approx((1.0 + 1.0 + 0.5 + 0.0) / 4)


def test_question_plus_answer_is_the_query(tiny_pair, data, tmp_path):
    retriever = RecordingRetriever()
    options = {"mode": "adaptive_retrieval", "retrieval_rule": "minp", "threshold": 1.0, "query": "question+answer"}
    evaluate(request(data, tmp_path / "a.jsonl", index="unused", options=options), factory(tiny_pair, retriever))
    records = {r["id"]: r for r in read_records(tmp_path / "a.jsonl")}
    # The reference: each question's no-retrieval answer, generated on its own.
    rag = OpenRAG(*tiny_pair, AnswerOptions(max_new_tokens=3, task="2wikimultihopqa"))
    drafts = {k: rag.answer(records[k]["question"], mode="no_retrieval").text for k in RECALL}
    assert all(drafts.values()), "the tiny model should say something for the query to be more than the question"
    expected = {k: f"{records[k]['question']} {drafts[k]}" for k in RECALL}
    assert retriever.calls == [[expected["b"]], [expected["c"], expected["d"]]]  # batches (a, b), (c, d)
    assert {k: records[k]["query"] for k in RECALL} == expected
    assert {k: records[k]["no_retrieval_text"] for k in RECALL} == drafts


def test_draft_is_reused_exactly(tiny_pair):
    """A question+answer search gives the answer the same passages given by hand give: the confidence rule reads
    the draft's signals instead of generating the no-retrieval answer again."""
    retriever = RecordingRetriever()
    rag = OpenRAG(*tiny_pair, AnswerOptions(max_new_tokens=4, ndocs=2, retrieval_rule="meanp", threshold=1.0,
                                            query="question+answer"), retriever=retriever)
    generate, rows = rag.engine.generate, []
    rag.engine.generate = lambda prefixes, batch, n, **kw: rows.append(len(batch)) or generate(prefixes, batch, n, **kw)
    searched = rag.answer_batch([PARIS_Q, BERLIN_Q])
    assert rows == [2, 4]  # the two drafts, then the evidence rows only: no second no-retrieval answer
    by_hand = rag.answer_batch([PARIS_Q, BERLIN_Q], [[{"title": c["title"], "text": c["text"]} for c in CORPUS[:2]]] * 2)
    assert len(retriever.calls) == 1
    for a, b in zip(searched, by_hand, strict=True):
        assert (a.text, a.retrieved, a.retrieval_value, a.no_retrieval_text) == (b.text, b.retrieved, b.retrieval_value, b.no_retrieval_text)
        assert [c.score for c in a.candidates] == [c.score for c in b.candidates]
        assert a.query == f"{a.question} {a.no_retrieval_text}" and [p["id"] for p in a.retrieved_passages] == ["paris", "berlin"]
        assert b.query is None and b.retrieved_passages == []
    assert rag.answer(PARIS_Q, mode="no_retrieval").query is None and len(retriever.calls) == 1  # nothing searched


def test_cli_eval_with_index(tiny_pair, index_folder, data, tmp_path, capsys):
    from openrag.cli import main

    model, tokenizer = tiny_pair
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval" / "2wiki.jsonl"
    common = ["eval", "--task", "2wikimultihopqa", "--dataset", str(data), "--model_name", str(tmp_path / "model"),
              "--device", "cpu", "--max_new_tokens", "2", "--mode", "always_retrieve", "--no_progress", "--output_file", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*common, "--index", str(index_folder), "--top_k", "1", "--query", "question+answer"])
    assert done.value.code == 0
    summary = json.loads((tmp_path / "eval" / "2wiki.metrics.json").read_text())
    assert summary["n"] == 4 and summary["ndocs"] == 1 and summary["query"] == "question+answer"
    assert summary["retrieval_recall_n"] == 3 and 0.0 <= summary["retrieval_recall@1"] <= 1.0
    assert "retrieval recall@1" in capsys.readouterr().out

    for extra, message in ((["--top_k", "2"], "--top_k needs --index"),
                           (["--passages", "from_index"], "--passages from_index needs --index"),
                           (["--query", "question+answer"], "needs --index")):
        with pytest.raises(SystemExit) as done:
            main([*common, *extra])
        assert done.value.code == 2 and message in capsys.readouterr().err
