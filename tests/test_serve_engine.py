"""The server over the real engine (a tiny random Llama on the bundled tokenizer) and a real BM25 index."""

from __future__ import annotations

import copy
import json

import pytest
from fastapi.testclient import TestClient

from openrag.answer import AnswerOptions, OpenRAG
from openrag.serve import ServeSettings, create_app

from .conftest import make_tiny_llama_for

CORPUS = [{"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
          {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
          {"id": "owl", "title": "Owl", "text": "Owls are nocturnal birds of prey."}]
PASSAGES = [{"title": "Lyon", "text": "Lyon is a city in France."}, {"title": "Rome", "text": "Rome is in Italy."}]


@pytest.fixture(scope="module")
def rag(smollm2_tokenizer, tmp_path_factory):
    from openrag.model.reflection import add_reflection_tokens
    from openrag.retrieval import build_index, open_index

    folder = tmp_path_factory.mktemp("serve_index")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    build_index(folder / "corpus.jsonl", folder / "index", show_progress=False)
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    add_reflection_tokens(None, tokenizer)
    model = make_tiny_llama_for(tokenizer, max_position_embeddings=512)
    return OpenRAG(model, tokenizer, AnswerOptions(max_new_tokens=4), retriever=open_index(folder / "index"))


@pytest.fixture(scope="module")
def client(rag):
    with TestClient(create_app(rag, ServeSettings(model_name="tiny")), base_url="http://localhost") as c:
        yield c


def test_given_passages_are_the_evidence(client, rag):
    body = {"question": "Which city is in France?", "passages": PASSAGES, "mode": "always_retrieve"}
    answer = client.post("/v1/answer", json=body).json()
    assert answer["retrieved"] is True
    assert [c["passage"] for c in answer["candidates"]] == PASSAGES
    direct = rag.answer(body["question"], PASSAGES, mode="always_retrieve").to_dict()
    assert answer["text"] == direct["text"]
    assert [c["text"] for c in answer["candidates"]] == [c["text"] for c in direct["candidates"]]


def test_without_passages_the_index_is_searched(client):
    answer = client.post("/v1/answer", json={"question": "What is the capital of France?", "mode": "always_retrieve",
                                             "ndocs": 2}).json()
    assert answer["retrieved"] is True and len(answer["candidates"]) == 2
    assert answer["candidates"][0]["passage"]["title"] == "Paris"


def test_chat_completion_over_the_engine(client):
    reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Capital of Germany?"}],
                                                      "mode": "no_retrieval", "max_tokens": 3}).json()
    assert reply["choices"][0]["message"]["content"] == reply["openrag"]["text"]
    assert reply["openrag"]["retrieved"] is False and reply["openrag"]["candidates"] == []


def test_a_question_longer_than_the_context_window_gets_422(client):
    r = client.post("/v1/answer", json={"question": "word " * 700, "mode": "no_retrieval"})
    assert r.status_code == 422 and "context window" in r.json()["error"]["message"]
