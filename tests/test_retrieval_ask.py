"""Retrieval hooked into answering: ``OpenRAG(retriever=index)`` and ``openrag ask --index``, with a tiny random
Llama on the bundled tokenizer and a BM25 index built by the test."""

from __future__ import annotations

import json

import pytest

from openrag.answer import AnswerOptions, OpenRAG
from openrag.retrieval import build_index, open_index


QUESTION = "Which city is the capital of France?"
CORPUS = [{"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
          {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
          {"id": "owl", "title": "Owl", "text": "Owls are nocturnal birds of prey."}]


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ask_index")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    build_index(corpus, folder / "index", show_progress=False)
    return folder / "index"


def test_openrag_answers_from_the_retriever(tiny_pair, index_folder):
    index = open_index(index_folder)
    rag = OpenRAG(*tiny_pair, AnswerOptions(max_new_tokens=4, mode="always_retrieve", ndocs=2), retriever=index)
    answer = rag.answer(QUESTION)
    expected = index.search([QUESTION], top_k=2)[0]
    assert [p.title for p in expected][0] == "Paris"
    assert [(c.passage["title"], c.passage["text"]) for c in answer.candidates] == [(p.title, p.text) for p in expected]
    same = rag.answer(QUESTION, [{"title": p.title, "text": p.text} for p in expected])  # as if given by hand
    assert answer.text == same.text and [c.score for c in answer.candidates] == [c.score for c in same.candidates]
    assert rag.answer(QUESTION, mode="no_retrieval").candidates == []


def test_ask_with_index(tiny_pair, index_folder, tmp_path, capsys):
    from openrag.cli import main

    model, tokenizer = tiny_pair
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    common = [QUESTION, "--model_name", str(tmp_path / "model"), "--device", "cpu", "--max_new_tokens", "3"]

    with pytest.raises(SystemExit) as done:
        main(["ask", *common, "--index", str(index_folder), "--top_k", "1", "--mode", "always_retrieve", "--json"])
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["passage"]["title"] for c in data["candidates"]] == ["Paris"]

    (tmp_path / "p.txt").write_text("Some passage.")
    for extra, message in ((["--index", str(index_folder), "--passages", str(tmp_path / "p.txt")], "not both"),
                           (["--top_k", "2"], "--top_k needs --index"),
                           (["--index", str(tmp_path / "nowhere")], "does not exist")):
        with pytest.raises(SystemExit) as done:
            main(["ask", *common, *extra])
        assert done.value.code == 2 and message in capsys.readouterr().err


def test_ask_questions_file_answers_each_row_from_its_own_passages(tiny_pair, tmp_path, capsys):
    from pathlib import Path

    from openrag.cli import main

    sample = Path(__file__).resolve().parents[1] / "examples" / "hotpotqa_sample.jsonl"
    rows = [json.loads(line) for line in sample.read_text().splitlines()]
    model, tokenizer = tiny_pair
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    common = ["--model_name", str(tmp_path / "model"), "--device", "cpu", "--max_new_tokens", "3"]
    with pytest.raises(SystemExit) as done:
        main(["ask", "--questions", str(sample), *common, "--mode", "always_retrieve", "--ndocs", "2", "--json"])
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in data] == [r["question_text"] for r in rows]
    assert [a["gold"] for a in data] == [r["answers_objects"][0]["spans"] for r in rows]
    for a, r in zip(data, rows):
        own = {c["title"] for c in r["contexts"]}
        assert len(a["candidates"]) == 2 and all(c["passage"]["title"] in own for c in a["candidates"])

    with pytest.raises(SystemExit) as done:
        main(["ask", QUESTION, "--questions", str(sample), *common])
    assert done.value.code == 2 and "not both" in capsys.readouterr().err
