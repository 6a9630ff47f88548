"""Retrieval at scale on small data: chunked bm25s files equal bm25s's own, a killed build resumes to the same
index, shards merge into the single build, faiss factory strings and search parameters, prebuilt (FlashRAG)
indexes, and the reranking stage with a tiny random cross-encoder. Dense tests use a bag-of-words stand-in
encoder (a word-hashing sentence-transformers look-alike): fast, and the vectors still carry meaning."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from openrag.retrieval import (  # noqa: E402
    BM25Settings,
    DenseSettings,
    IndexSettings,
    SearchSettings,
    build_index,
    existing_index_matches,
    iter_passages,
    merge_index,
    open_index,
    read_corpus,
)
from openrag.retrieval import dense as dense_module  # noqa: E402
from openrag.retrieval.bm25 import BM25Retriever, BM25Writer  # noqa: E402
from openrag.retrieval.dense import DenseWriter  # noqa: E402

WORDS = ("cat dog owl eel yak fox bee ant cow pig hen elk emu gnu koi asp bat boa cod doe "
         "paris berlin rome madrid lisbon vienna prague oslo bern dublin").split()


def make_passages(n: int = 40) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"id": f"p{i}", "title": f"Topic {i}",
             "text": " ".join(rng.choice(WORDS, size=8)) + f" unique{i}"} for i in range(n)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


class WordHashEncoder:
    """A stand-in sentence-transformers encoder: each word adds +1 to a hashed coordinate; unit vectors."""

    def __init__(self, dimension: int = 32):
        self.dimension = dimension
        self.calls: list[int] = []  # texts per encode call
        self.devices: list = []

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture
def encoder(monkeypatch):
    fake = WordHashEncoder()

    def load(settings, device=None):
        fake.devices.append(device)
        return fake

    monkeypatch.setattr(dense_module, "load_encoder", load)
    return fake


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", make_passages())


def flat_vectors(index) -> np.ndarray:
    """[N, D] the vectors of a dense index (reconstructed from faiss)."""
    return index.reconstruct_n(0, index.ntotal)


def bm25_arrays(folder) -> dict:
    return {name: np.load(folder / "bm25" / name) for name in
            ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")} | {
        "vocab": json.loads((folder / "bm25" / "vocab.index.json").read_text()),
        "params": json.loads((folder / "bm25" / "params.index.json").read_text())}


def assert_same_index(a, b) -> None:
    assert (a / "passages.jsonl").read_bytes() == (b / "passages.jsonl").read_bytes()
    assert np.array_equal(np.load(a / "passage_offsets.npy"), np.load(b / "passage_offsets.npy"))
    if (a / "bm25").exists() or (b / "bm25").exists():
        left, right = bm25_arrays(a), bm25_arrays(b)
        assert left.keys() == right.keys()
        for name in left:
            if isinstance(left[name], np.ndarray):
                assert left[name].dtype == right[name].dtype and np.array_equal(left[name], right[name]), name
            else:
                assert left[name] == right[name], name
    if (a / "dense.faiss").exists() or (b / "dense.faiss").exists():
        assert np.array_equal(flat_vectors(faiss.read_index(str(a / "dense.faiss"))),
                              flat_vectors(faiss.read_index(str(b / "dense.faiss"))))


# --- streaming corpus and chunked BM25 -----------------------------------------------------------------------------

def test_json_lines_are_streamed_not_read_whole(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n\n{"id": "b", "contents": "\\"T\\"\\ntwo"}\nbroken\n')
    stream = iter_passages(path)
    assert [(p.id, p.title, p.text) for p in (next(stream), next(stream))] == [("a", "", "one"), ("b", "T", "two")]
    with pytest.raises(ValueError, match="line 4 is not JSON"):
        next(stream)  # the bad line is only met when it is reached
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"not UTF-8 \(invalid byte at offset 50, line 2\)"):
        list(iter_passages(path))


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_chunked_bm25_files_equal_bm25s_own(tmp_path, method):
    texts = [f"{p['title']}\n{p['text']}" for p in make_passages(23)] + ["the and of", ""]  # stopwords only, empty
    settings = BM25Settings(method=method)
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    writer = BM25Writer(settings)
    for k, start in enumerate(range(0, len(texts), 4)):
        writer.add(chunks, k, texts[start:start + 4])
    (tmp_path / "chunked").mkdir()
    writer.finish(tmp_path / "chunked", [chunks] * (k + 1), len(texts))
    (tmp_path / "whole").mkdir()
    BM25Retriever.from_texts(texts, settings).model.save(str(tmp_path / "whole" / "bm25"), allow_pickle=False)
    ours, theirs = bm25_arrays(tmp_path / "chunked"), bm25_arrays(tmp_path / "whole")
    for name in ours:
        if isinstance(ours[name], np.ndarray):
            assert ours[name].dtype == theirs[name].dtype and np.array_equal(ours[name], theirs[name]), name
        else:
            assert ours[name] == theirs[name], name
    loaded = BM25Retriever.load(tmp_path / "chunked" / "bm25", settings)
    assert loaded.rank(["cat paris unique3", "the"], 5) == BM25Retriever.from_texts(texts, settings).rank(
        ["cat paris unique3", "the"], 5)


# --- resume, atomic output ---------------------------------------------------------------------------------------

def kill_at(monkeypatch, writer_class, chunk: int) -> dict:
    """Make ``writer_class`` stop the build at chunk ``chunk`` while ``armed`` (set it False to run again)."""
    real, state = writer_class.add, {"armed": True}

    def add(self, chunks, k, texts):
        if state["armed"] and k == chunk:
            raise KeyboardInterrupt  # as if killed while embedding chunk `chunk`
        real(self, chunks, k, texts)

    monkeypatch.setattr(writer_class, "add", add)
    return state


def test_killed_build_resumes_to_the_uninterrupted_index(tmp_path, corpus, encoder, monkeypatch):
    settings = IndexSettings(kind="hybrid")
    build_index(corpus, tmp_path / "whole", settings, chunk_size=6, show_progress=False)
    whole_calls = list(encoder.calls)
    assert whole_calls == [6] * 6 + [4]  # 40 passages in chunks of 6

    output = tmp_path / "idx"
    kill = kill_at(monkeypatch, DenseWriter, 3)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, output, settings, chunk_size=6, show_progress=False)
    assert not output.exists()  # never a half-written index at the output
    building = tmp_path / ".idx.building"
    assert sorted(f.name for f in (building / "chunks").glob("dense-*.npy")) == [f"dense-00000{k}.npy" for k in range(3)]
    (building / "chunks" / ".dense-000003.npy.tmp-99999").write_bytes(b"half a chunk")  # killed mid-write
    kill["armed"] = False
    encoder.calls.clear()
    index = build_index(corpus, output, settings, chunk_size=6, show_progress=False)
    assert encoder.calls[:4] == [6, 6, 6, 4]  # chunks 3 to 6 only, then the queries below
    assert not building.exists() and len(index) == 40
    assert_same_index(output, tmp_path / "whole")
    assert index.search([make_passages()[7]["text"]], top_k=1)[0][0].id == "p7"


def test_resume_needs_the_same_corpus_and_settings(tmp_path, corpus, monkeypatch, capsys):
    kill = kill_at(monkeypatch, BM25Writer, 2)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, tmp_path / "idx", chunk_size=5, show_progress=False)
    kill["armed"] = False
    assert "run the same command again" in capsys.readouterr().err
    build_index(corpus, tmp_path / "idx", IndexSettings(bm25=BM25Settings(k1=0.9)), chunk_size=5, show_progress=False)
    assert "holds a build of something else; starting over" in capsys.readouterr().err
    build_index(corpus, tmp_path / "ref", IndexSettings(bm25=BM25Settings(k1=0.9)), chunk_size=5, show_progress=False)
    assert_same_index(tmp_path / "idx", tmp_path / "ref")


def test_duplicate_ids_and_empty_corpora_are_caught_before_indexing(tmp_path, encoder):
    records = make_passages(5) + [{"id": "p2", "text": "again"}, {"id": "p4", "text": "again"}]
    with pytest.raises(ValueError, match=r"2 duplicate passage id\(s\), e.g. 'p2', 'p4'"):
        build_index(write_jsonl(tmp_path / "dup.jsonl", records), tmp_path / "idx", IndexSettings(kind="dense"),
                    show_progress=False)
    assert encoder.calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dup.jsonl"]
    with pytest.raises(ValueError, match="holds no passages"):
        build_index(write_jsonl(tmp_path / "empty.jsonl", []), tmp_path / "idx", show_progress=False)


# --- damaged indexes (issue 31, item 2) ----------------------------------------------------------------------------

def _cut(path, keep: float = 0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _scramble(path):  # random bytes, the same size
    path.write_bytes(np.random.default_rng(1).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


DAMAGE = {
    "passages.jsonl cut short": ("passages.jsonl", _cut),
    "passages.jsonl scrambled": ("passages.jsonl", _scramble),
    "dense.faiss cut short": ("dense.faiss", _cut),
    "dense.faiss scrambled": ("dense.faiss", _scramble),
    "passage_offsets.npy cut short": ("passage_offsets.npy", _cut),
    "a BM25 array cut short": ("bm25/data.csc.index.npy", lambda p: _cut(p, 0.9)),
    "the BM25 vocabulary cut short": ("bm25/vocab.index.json", _cut),
    "dense.faiss gone": ("dense.faiss", lambda p: p.unlink()),
}


@pytest.fixture
def hybrid(tmp_path, corpus, encoder):
    build_index(corpus, tmp_path / "idx", IndexSettings(kind="hybrid"), show_progress=False)
    return tmp_path / "idx"


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_index_is_refused_when_opened_naming_the_file(hybrid, corpus, damage):
    name, harm = DAMAGE[damage]
    harm(hybrid / name)
    with pytest.raises(ValueError, match=rf"index {hybrid} is damaged: {hybrid / name} .*; rebuild it with "
                                         rf"`openrag index --corpus {corpus} --output {hybrid} --overwrite`"):
        open_index(hybrid)


@pytest.mark.parametrize("damage", ["passages.jsonl cut short", "passages.jsonl scrambled", "dense.faiss cut short",
                                    "passage_offsets.npy cut short", "a BM25 array cut short"])
def test_an_index_that_records_no_files_is_checked_too(hybrid, damage):
    """An index built before manifests recorded their files: what each file must be is still checked."""
    manifest = json.loads((hybrid / "manifest.json").read_text())
    del manifest["files"]
    (hybrid / "manifest.json").write_text(json.dumps(manifest))
    name, harm = DAMAGE[damage]
    harm(hybrid / name)
    with pytest.raises(ValueError, match=rf"index {hybrid} is damaged: {hybrid / name} .*--overwrite"):
        open_index(hybrid)


@pytest.mark.parametrize("command", [["ask", "Which city?", "--index"], ["serve", "--index"]])
def test_ask_and_serve_refuse_a_damaged_index_before_loading_the_model(hybrid, monkeypatch, capsys, command):
    from openrag.answer import OpenRAG
    from openrag.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(never))
    _cut(hybrid / "passages.jsonl")
    with pytest.raises(SystemExit) as done:
        main([*command, str(hybrid)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"is damaged: {hybrid / 'passages.jsonl'} holds " in err and "Traceback" not in err, err


def test_an_undamaged_index_records_every_file_and_opens(hybrid):
    files = json.loads((hybrid / "manifest.json").read_text())["files"]
    assert sorted(files) == ["bm25/data.csc.index.npy", "bm25/indices.csc.index.npy", "bm25/indptr.csc.index.npy",
                             "bm25/params.index.json", "bm25/vocab.index.json", "dense.faiss", "passage_offsets.npy",
                             "passages.jsonl"]
    assert all(files[name]["bytes"] == (hybrid / name).stat().st_size for name in files)
    with open_index(hybrid) as index:
        assert index.search([make_passages()[7]["text"]], top_k=1)[0][0].id == "p7"


# --- shards ------------------------------------------------------------------------------------------------------

def test_shards_merge_into_the_single_build(tmp_path, corpus, encoder):
    settings = IndexSettings(kind="hybrid")
    build_index(corpus, tmp_path / "single", settings, chunk_size=4, show_progress=False)
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, shard in enumerate(shards):
        encoder.calls.clear()
        assert build_index(corpus, shard, settings, chunk_size=4, shard=(i, 3), show_progress=False) is None
        assert encoder.calls == [4] * len(range(i, 10, 3))  # only this shard's chunks
        assert build_index(corpus, shard, settings, chunk_size=4, shard=(i, 3), show_progress=False) is None  # done
    with pytest.raises(FileNotFoundError, match="one shard of a sharded build"):
        open_index(shards[0])
    with pytest.raises(ValueError, match="missing 1/3"):
        merge_index([shards[0], shards[2]], tmp_path / "merged")
    merged = merge_index(list(reversed(shards)), tmp_path / "merged")
    assert_same_index(tmp_path / "merged", tmp_path / "single")
    assert merged.manifest["build"] == {"chunk_size": 4, "shards": 3}
    single = open_index(tmp_path / "single")
    queries = ["unique12 cat", "paris berlin", "unique39"]
    assert [[p.id for p in hits] for hits in merged.search(queries, 5)] == \
           [[p.id for p in hits] for hits in single.search(queries, 5)]

    build_index(corpus, tmp_path / "other", IndexSettings(kind="hybrid", rrf_k=10), chunk_size=4, shard=(1, 3),
                show_progress=False)
    with pytest.raises(ValueError, match="shard of another build"):
        merge_index([shards[0], tmp_path / "other", shards[2]], tmp_path / "merged2")


def test_shards_of_different_counts_are_not_merged(tmp_path, corpus):
    """Issue 31: shard 0/2 and shard 1/3 are parts of two builds, not "a build missing chunk 3"."""
    build_index(corpus, tmp_path / "a", chunk_size=4, shard=(0, 2), show_progress=False)
    build_index(corpus, tmp_path / "b", chunk_size=4, shard=(1, 3), show_progress=False)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'b'} is shard 1/3 and {tmp_path / 'a'} is shard 0/2: different "
                                         "shard counts"):
        merge_index([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_build_that_did_not_finish_is_named_so(tmp_path, corpus, monkeypatch, capsys):
    """Issue 31: `ask --index .NAME.building` is a stopped build to resume, not "one shard of a sharded build"."""
    from openrag.answer import OpenRAG
    from openrag.cli import main

    kill_at(monkeypatch, BM25Writer, 2)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, tmp_path / "idx", chunk_size=5, show_progress=False)
    half = tmp_path / ".idx.building"
    capsys.readouterr()
    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("the model was loaded")))
    with pytest.raises(SystemExit) as done:
        main(["ask", "Which city?", "--index", str(half)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"{half} is a build that did not finish" in err, err
    assert f"`openrag index --corpus {corpus} --output {tmp_path / 'idx'}` command again to resume it" in err
    assert "shard" not in err


# --- faiss factory strings and search parameters -----------------------------------------------------------------

@pytest.mark.parametrize("factory, params", [("Flat", ""), ("HNSW8", "efSearch=64"), ("SQ8", ""),
                                             ("IVF4,Flat", "nprobe=4"), ("IVF2,PQ4x4", "nprobe=2"),
                                             ("PCA16,IVF2,SQ8", "nprobe=2")])
def test_faiss_factory_strings_build_and_search(tmp_path, corpus, encoder, factory, params):
    settings = IndexSettings(kind="dense", dense=DenseSettings(faiss=factory, train_sample=30))
    index = build_index(corpus, tmp_path / "idx", settings, chunk_size=7, show_progress=False,
                        search=SearchSettings(faiss_params=params))
    assert index.manifest["settings"]["dense"]["faiss"] == factory and index.manifest["search"]["faiss_params"] == params
    exact = build_index(corpus, tmp_path / "exact", IndexSettings(kind="dense"), show_progress=False)
    queries = [p["text"] for p in make_passages()]
    found, truth = index.search(queries, 5), exact.search(queries, 5)
    if factory in ("Flat", "IVF4,Flat"):  # exact (every list probed): the same scores, ties in any order
        np.testing.assert_allclose([[p.score for p in hits] for hits in found],
                                   [[p.score for p in hits] for hits in truth], atol=1e-5)
    recall = np.mean([len({p.id for p in f} & {p.id for p in t}) / 5 for f, t in zip(found, truth)])
    assert recall >= 0.5 and np.mean([f[0].id == f"p{i}" for i, f in enumerate(found)]) >= 0.75  # its own passage first
    if "nprobe" in params:
        assert faiss.extract_index_ivf(index.retriever.index).nprobe == int(params.split("=")[1])
    if "efSearch" in params:
        assert faiss.downcast_index(index.retriever.index).hnsw.efSearch == 64


def test_default_nprobe_rule():
    from openrag.retrieval.dense import default_nprobe

    # sqrt of the list count, at least 16, at most every list: worked out by hand
    assert [default_nprobe(n) for n in (1, 2, 16, 64, 100, 256, 257, 1024, 4096, 65536)] == \
        [1, 2, 16, 16, 16, 16, 17, 32, 64, 256]


def test_an_ivf_index_searches_its_default_lists_unless_told_otherwise(tmp_path, corpus, encoder):
    """IVF32 over 40 passages: 16 lists by default (recorded in the manifest), faiss's 1 when asked for."""
    settings = IndexSettings(kind="dense", dense=DenseSettings(faiss="IVF32,Flat", train_sample=40))
    index = build_index(corpus, tmp_path / "idx", settings, show_progress=False)
    assert index.manifest["search"]["faiss_params"] == "nprobe=16"
    assert faiss.extract_index_ivf(index.retriever.index).nprobe == 16
    for search, nprobe in ((SearchSettings(), 16), (SearchSettings(faiss_params="nprobe=1"), 1)):
        with open_index(tmp_path / "idx", search=search) as opened:
            assert faiss.extract_index_ivf(opened.retriever.index).nprobe == nprobe
    flat = build_index(corpus, tmp_path / "flat", IndexSettings(kind="dense"), show_progress=False)
    assert flat.manifest["search"]["faiss_params"] == ""  # no lists: nothing to set


def test_bad_factory_strings_and_parameters_are_named(tmp_path, corpus, encoder):
    with pytest.raises(ValueError, match="faiss cannot make an index of 'IVF4,PQ5'"):
        build_index(corpus, tmp_path / "a", IndexSettings(kind="dense", dense=DenseSettings(faiss="IVF4,PQ5")),
                    show_progress=False)
    with pytest.raises(ValueError, match=r"needs at least 64 training vectors, and there are 40"):
        build_index(corpus, tmp_path / "b", IndexSettings(kind="dense", dense=DenseSettings(faiss="IVF64,Flat")),
                    show_progress=False)
    assert encoder.calls == []  # refused before any embedding
    with pytest.raises(ValueError, match=r"faiss could not train 'OPQ4,IVF2,PQ4' on 40 vectors"):  # OPQ: 256 needed
        build_index(corpus, tmp_path / "c", IndexSettings(kind="dense", dense=DenseSettings(faiss="OPQ4,IVF2,PQ4")),
                    show_progress=False)
    build_index(corpus, tmp_path / "flat", IndexSettings(kind="dense"), show_progress=False)
    with pytest.raises(ValueError, match="'nprobe=8' does not apply to this index"):
        open_index(tmp_path / "flat", search=SearchSettings(faiss_params="nprobe=8"))
    build_index(corpus, tmp_path / "bm25", show_progress=False)
    with pytest.raises(ValueError, match="apply to dense and hybrid indexes"):
        open_index(tmp_path / "bm25", search=SearchSettings(faiss_params="nprobe=8"))


def test_older_index_folders_still_open_and_match(tmp_path, corpus, encoder):
    settings = IndexSettings(kind="dense")
    build_index(corpus, tmp_path / "idx", settings, show_progress=False)
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in ("faiss", "train_sample", "query_prefix", "passage_prefix"):  # what a folder of the last release lacks
        del manifest["settings"]["dense"][name]
    del manifest["search"], manifest["build"]
    manifest_path.write_text(json.dumps(manifest))
    assert existing_index_matches(tmp_path / "idx", corpus, settings)
    assert open_index(tmp_path / "idx").search([make_passages()[3]["text"]], top_k=1)[0][0].id == "p3"


def test_device_reaches_the_encoder(tmp_path, corpus, encoder):
    build_index(corpus, tmp_path / "idx", IndexSettings(kind="dense"), device="cuda:1", show_progress=False)
    assert set(encoder.devices) == {"cuda:1"}


# --- prebuilt faiss indexes (FlashRAG) ---------------------------------------------------------------------------

@pytest.fixture
def flashrag(tmp_path, encoder):
    """A FlashRAG-style corpus ({id, contents}) and its e5_Flat.index made by the stand-in encoder."""
    records = [{"id": str(i), "contents": f'"{p["title"]}"\n{p["text"]}'} for i, p in enumerate(make_passages())]
    corpus = write_jsonl(tmp_path / "wiki.jsonl", records)
    index = faiss.IndexFlatIP(encoder.dimension)
    index.add(encoder.encode([f"{p['title']}\n{p['text']}" for p in make_passages()]))
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    encoder.calls.clear()
    return corpus, tmp_path / "e5_Flat.index"


def test_flashrag_index_is_adopted_without_embedding(tmp_path, flashrag, encoder):
    corpus, faiss_file = flashrag
    index = build_index(corpus, tmp_path / "wiki.index", IndexSettings(kind="dense"), faiss_index=faiss_file,
                        show_progress=False)
    assert encoder.calls == [] and len(index) == 40
    assert index.manifest["settings"]["dense"]["faiss"] == "prebuilt"
    assert index.manifest["prebuilt_faiss"]["path"] == str(faiss_file.resolve())
    hit = index.search([make_passages()[17]["text"]], top_k=1)[0][0]
    assert (hit.id, hit.title) == ("17", "Topic 17")
    again = build_index(corpus, tmp_path / "wiki.index", IndexSettings(kind="dense"), faiss_index=faiss_file,
                        show_progress=False)
    assert again.manifest["created"] == index.manifest["created"]  # up to date: nothing redone


def test_flashrag_row_count_and_dimension_are_checked(tmp_path, flashrag, encoder):
    corpus, faiss_file = flashrag
    short = write_jsonl(tmp_path / "short.jsonl", [json.loads(line) for line in corpus.read_text().splitlines()[:39]])
    with pytest.raises(ValueError, match="holds 40 vectors but the corpus has 39 passages"):
        build_index(short, tmp_path / "a", IndexSettings(kind="dense"), faiss_index=faiss_file, show_progress=False)
    narrow = faiss.IndexFlatIP(16)
    narrow.add(np.zeros((40, 16), dtype=np.float32))
    faiss.write_index(narrow, str(tmp_path / "narrow.index"))
    with pytest.raises(ValueError, match="holds 16-dimensional vectors but the encoder .* makes 32-dimensional"):
        build_index(corpus, tmp_path / "b", IndexSettings(kind="dense"), faiss_index=tmp_path / "narrow.index",
                    show_progress=False)
    (tmp_path / "junk.index").write_bytes(b"not faiss")
    with pytest.raises(ValueError, match="is not a faiss index"):
        build_index(corpus, tmp_path / "c", IndexSettings(kind="dense"), faiss_index=tmp_path / "junk.index",
                    show_progress=False)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_e5_and_bge_get_flashrag_prefixes():
    from openrag.retrieval.dense import BGE_INSTRUCTION, default_prefixes

    assert default_prefixes("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert default_prefixes("BAAI/bge-base-en-v1.5") == (BGE_INSTRUCTION, "")
    assert default_prefixes("all-MiniLM-L6-v2") == ("", "")


# --- the command -------------------------------------------------------------------------------------------------

def test_index_command_shards_merges_and_adopts(tmp_path, corpus, flashrag, encoder, capsys):
    from openrag.cli import main

    def openrag(*argv):
        with pytest.raises(SystemExit) as exit_:
            main(["index", *argv, "--quiet"])
        return exit_.value.code, capsys.readouterr()

    common = ["--corpus", str(corpus), "--kind", "hybrid", "--chunk_size", "8"]
    for i in range(2):
        code, out = openrag(*common, "--output", str(tmp_path / f"s{i}"), "--shard", f"{i}/2")
        assert code == 0 and f"shard {i}/2" in out.out
    code, out = openrag("--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--output", str(tmp_path / "m"))
    assert code == 0 and "merged 2 shards (40 passages)" in out.out
    code, out = openrag(*common, "--output", str(tmp_path / "m"))
    assert code == 0 and "up to date" in out.out
    code, out = openrag("--output", str(tmp_path / "x"))
    assert code == 2 and "--corpus is required" in out.err
    code, out = openrag(*common, "--output", str(tmp_path / "x"), "--shard", "2/2")
    assert code == 2 and "0 <= i < n" in out.err

    wiki, faiss_file = flashrag
    code, out = openrag("--corpus", str(wiki), "--faiss_index", str(faiss_file), "--output", str(tmp_path / "w"))
    assert code == 0 and "indexed 40 passages" in out.out and open_index(tmp_path / "w").kind == "dense"

    code, out = openrag(*common, "--output", str(tmp_path / "ivf"), "--kind", "dense", "--faiss", "IVF2,Flat",
                        "--train_sample", "40")
    assert code == 0 and open_index(tmp_path / "ivf").manifest["search"]["faiss_params"] == "nprobe=2"  # both lists
    code, out = openrag(*common, "--output", str(tmp_path / "ivf"), "--kind", "dense", "--faiss", "IVF2,Flat",
                        "--train_sample", "40")
    assert code == 0 and "nothing to do" in out.out  # no --faiss_params: the default, as recorded
    code, out = openrag(*common, "--output", str(tmp_path / "ivf"), "--kind", "dense", "--faiss", "IVF2,Flat",
                        "--train_sample", "40", "--faiss_params", "nprobe=1")
    assert code == 0 and "search settings updated" in out.out
    assert faiss.extract_index_ivf(open_index(tmp_path / "ivf").retriever.index).nprobe == 1


# --- reranking ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A random one-layer BERT cross-encoder (one relevance logit) with a word-level vocabulary, saved to a folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("cross_encoder")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "topic"] + WORDS + [f"unique{i}" for i in range(40)] + \
            [str(i) for i in range(40)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=1, max_position_embeddings=64)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # spread the scores so their order is not float noise
    model.save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def reference_scores(folder, query: str, texts: list[str]) -> np.ndarray:
    """sigmoid of the model's logit for each (query, text) pair, computed with transformers directly."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer([query] * len(texts), texts, padding=True, truncation=True, return_tensors="pt")
        return torch.sigmoid(model(**batch).logits[:, 0]).numpy()


def test_rerank_stage_reorders_the_first_stage_by_the_cross_encoder(tmp_path, corpus, tiny_cross_encoder):
    build_index(corpus, tmp_path / "idx", show_progress=False,
                search=SearchSettings(rerank=str(tiny_cross_encoder), rerank_depth=10))
    index = open_index(tmp_path / "idx")
    assert index.reranker is not None and index.rerank_depth == 10
    query = "cat paris dog"
    first_stage = open_index(tmp_path / "idx", search=SearchSettings()).search([query], top_k=10)[0]
    reranked = index.search([query], top_k=3)[0]
    expected = reference_scores(tiny_cross_encoder, query, [f"{p.title}\n{p.text}" for p in first_stage])
    order = np.argsort(-expected, kind="stable")[:3]
    assert [p.id for p in reranked] == [first_stage[i].id for i in order]
    assert [p.score for p in reranked] == pytest.approx(expected[order].tolist(), abs=1e-5)
    assert [len(hits) for hits in index.search([query, "unique5"], top_k=4)] == [4, 1]  # BM25 matched one passage


def test_reread_corpus_matches_the_streamed_one(tmp_path, corpus):
    assert [p.id for p in read_corpus(corpus).passages] == [p.id for p in iter_passages(corpus)]
