"""Retrieval without the dense encoder: corpus reading, BM25 index folders, bad input, RRF and recall@k."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openrag.retrieval import (
    Index,
    IndexSettings,
    Retriever,
    build_index,
    corpus_checksum,
    open_index,
    read_corpus,
    reciprocal_rank_fusion,
    retrieval_recall_at_k,
    split_words,
)
from openrag.passage import Passage
from openrag.retrieval.corpus import PassageStore

ANIMALS = [
    {"id": "cat", "title": "Cat", "text": "The cat is a small domesticated carnivorous mammal that purrs."},
    {"id": "dog", "title": "Dog", "text": "The dog is a domesticated descendant of the wolf and barks."},
    {"id": "owl", "title": "Owl", "text": "Owls are nocturnal birds of prey with large forward-facing eyes."},
    {"id": "eel", "title": "Eel", "text": "Eels are elongated fish; the electric eel stuns its prey."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def animals(tmp_path):
    return write_jsonl(tmp_path / "animals.jsonl", ANIMALS)


# --- corpus ------------------------------------------------------------------------------------------------------

def test_split_words_windows_overlap():
    text = " ".join(f"w{i}" for i in range(250))
    chunks = [c.split() for c in split_words(text, words=100, overlap=20)]
    assert [(c[0], c[-1], len(c)) for c in chunks] == [("w0", "w99", 100), ("w80", "w179", 100), ("w160", "w249", 90)]
    assert split_words("one two three", words=100, overlap=20) == ["one two three"]
    assert split_words("   \n ", words=100, overlap=20) == []
    assert len(split_words(" ".join(["x"] * 100), words=100, overlap=20)) == 1


def test_reads_jsonl_flashrag_list_and_title_dict(tmp_path):
    corpus = read_corpus(write_jsonl(tmp_path / "a.jsonl", ANIMALS))
    assert corpus.passages[0] == Passage(title="Cat", text=ANIMALS[0]["text"], id="cat")

    flashrag = write_jsonl(tmp_path / "f.jsonl", [{"id": 7, "contents": '"Paris"\nParis is the capital of France.'}])
    assert read_corpus(flashrag).passages == [Passage("Paris", "Paris is the capital of France.", "7")]

    listed = tmp_path / "l.json"
    listed.write_text(json.dumps([{"title": "A", "text": "alpha"}, {"title": "B", "text": "beta"}]))
    assert [(p.id, p.title) for p in read_corpus(listed).passages] == [("0", "A"), ("1", "B")]

    by_title = tmp_path / "hotpot_corpus.json"
    by_title.write_text(json.dumps({"Paris": ["Paris is a city.", " It is in France."]}))
    assert read_corpus(by_title).passages == [Passage("Paris", "Paris is a city.  It is in France.", "0")]


def test_reads_folder_of_text_files(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "long.txt").write_text(" ".join(f"w{i}" for i in range(250)))
    (docs / "sub" / "note.md").write_text("# Note\nShort note.")
    (docs / "skip.pdf").write_bytes(b"%PDF")
    passages = read_corpus(docs, passage_words=100, passage_overlap=20).passages
    assert [(p.id, p.title) for p in passages] == [("long.txt#0", "long"), ("long.txt#1", "long"), ("long.txt#2", "long"),
                                                   ("sub/note.md#0", "note")]
    assert passages[1].text.split()[0] == "w80"
    assert passages[3].text == "# Note Short note."


def test_checksum_follows_content(tmp_path, animals):
    assert read_corpus(animals).checksum == corpus_checksum(animals)
    before = corpus_checksum(animals)
    write_jsonl(animals, ANIMALS[:3])
    assert corpus_checksum(animals) != before


@pytest.mark.parametrize("content, message", [
    ("", "holds no passages"),
    ("\n\n", "holds no passages"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate passage id"),
    ('{"id": "a", "text": "x"}\nnot json\n', "line 2 is not JSON"),
    ('{"id": "a", "body": "x"}\n{"id": "b", "body": "y"}\n', "no 'text' or 'contents' field"),
    ('{"id": "a", "text": "x"}\n{"id": "b", "contents": null}\n', "line 2: field 'contents' must be a string .*got NoneType"),
    ('{"id": "a", "text": {"body": "x"}}\n', "line 1: field 'text' must be a string .*got dict"),
    ('{"id": "a", "title": 3, "text": "x"}\n', "line 1: field 'title' must be a string, got int"),
])
def test_bad_json_corpora_are_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_corpus(path)


def test_bad_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt or .md files"):
        read_corpus(tmp_path / "empty")
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "ok.txt").write_text("fine")
    (tmp_path / "latin" / "cafe.txt").write_bytes("line one\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"cafe.txt is not UTF-8 .*line 2"):
        read_corpus(tmp_path / "latin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_corpus(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="overlap"):
        read_corpus(tmp_path / "latin", passage_words=10, passage_overlap=10)


def test_passage_store_round_trip(tmp_path):
    passages = [Passage("Zürich", "naïve café ☕", "z"), Passage("", "", "empty")]
    PassageStore.write(tmp_path, passages)
    store = PassageStore(tmp_path)
    assert len(store) == 2 and [store[0], store[1]] == passages
    assert store.get(0, score=1.5).score == 1.5
    with pytest.raises(IndexError):
        store[2]


def test_closed_passage_store_and_index_refuse_reads(tmp_path, animals):
    PassageStore.write(tmp_path, [Passage("T", "text", "t")])
    with PassageStore(tmp_path) as store:
        assert store[0].text == "text"
    store.close()  # again: nothing happens
    for read in (lambda: store[0], lambda: store.get(0), lambda: len(store), lambda: list(store)):
        with pytest.raises(ValueError, match="is closed: open it"):
            read()
    with build_index(animals, tmp_path / "idx", IndexSettings(kind="bm25"), show_progress=False) as index:
        assert index.search(["purrs"], top_k=1)[0][0].id == "cat"
    with pytest.raises(ValueError, match="is closed"):
        index.search(["purrs"], top_k=1)
    assert "passages=4" in repr(index)


# --- BM25 index --------------------------------------------------------------------------------------------------

def test_bm25_index_search(tmp_path, animals):
    index = build_index(animals, tmp_path / "idx", IndexSettings(kind="bm25"), show_progress=False)
    assert isinstance(index, Retriever)
    [cats, prey, nothing] = index.search(["which mammal purrs", "birds of prey", "the and of"], top_k=3)
    assert cats[0].id == "cat" and cats[0].title == "Cat" and cats[0].score > 0
    assert {p.id for p in prey} == {"owl", "eel"} and prey[0].id == "owl"
    assert all(a.score >= b.score for a, b in zip(prey, prey[1:]))
    assert nothing == []  # only stopwords: no passage shares a term
    assert len(index.search(["domesticated"], top_k=50)[0]) == 2  # more than the corpus: what matches
    assert index.search([], top_k=3) == []
    with pytest.raises(TypeError, match="list of queries"):
        index.search("cat", top_k=1)


def test_index_folder_reopens_without_pickle(tmp_path, animals):
    build_index(animals, tmp_path / "idx", show_progress=False)
    folder = tmp_path / "idx"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["corpus"]["passages"] == 4
    assert manifest["corpus"]["checksum"] == corpus_checksum(animals)
    assert manifest["settings"]["bm25"]["k1"] == 1.5 and "dense" not in manifest["settings"]
    assert manifest["versions"]["bm25s"]
    for array in folder.rglob("*.npy"):
        np.load(array, allow_pickle=False)
    assert not [f for f in folder.rglob("*") if f.suffix in (".pkl", ".pickle", ".bin")]
    index = open_index(folder, corpus=animals, settings=IndexSettings(kind="bm25"))
    assert isinstance(index, Index) and len(index) == 4
    assert index.search(["wolf"], top_k=1)[0][0].id == "dog"
    assert not list(tmp_path.glob(".idx.*"))  # no temporary folders left


def test_rebuild_reuses_refuses_or_overwrites(tmp_path, animals):
    output = tmp_path / "idx"
    build_index(animals, output, show_progress=False)
    created = json.loads((output / "manifest.json").read_text())["build_seconds"], (output / "manifest.json").stat().st_mtime_ns
    build_index(animals, output, show_progress=False)  # same settings, same corpus: reused
    assert ((json.loads((output / "manifest.json").read_text())["build_seconds"], (output / "manifest.json").stat().st_mtime_ns)
            == created)
    with pytest.raises(ValueError, match=r"other settings \(kind: 'bm25' in the index, 'hybrid' asked\)"):
        build_index(animals, output, IndexSettings(kind="hybrid"), show_progress=False)
    with pytest.raises(ValueError, match=r"bm25.k1: 1.5 in the index, 0.9 asked"):
        from openrag.retrieval import BM25Settings
        open_index(output, settings=IndexSettings(bm25=BM25Settings(k1=0.9)))
    write_jsonl(animals, ANIMALS + [{"id": "yak", "title": "Yak", "text": "The yak is a long-haired bovine."}])
    with pytest.raises(ValueError, match="different corpus"):
        build_index(animals, output, show_progress=False)
    with pytest.raises(ValueError, match="different corpus"):
        open_index(output, corpus=animals)
    assert len(build_index(animals, output, overwrite=True, show_progress=False)) == 5
    assert open_index(output).search(["bovine"], top_k=1)[0][0].id == "yak"


def test_refuses_to_write_over_other_files_and_opens_only_indexes(tmp_path, animals):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an openrag index"):
        build_index(animals, tmp_path / "notes", show_progress=False)
    with pytest.raises(FileNotFoundError, match="not an openrag index"):
        open_index(tmp_path / "notes")
    with pytest.raises(FileNotFoundError, match="openrag index --corpus"):
        open_index(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert len(build_index(animals, tmp_path / "empty", show_progress=False)) == 4  # an empty folder is fine


def test_future_format_is_refused(tmp_path, animals):
    build_index(animals, tmp_path / "idx", show_progress=False)
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version 99"):
        open_index(tmp_path / "idx")
    text = manifest_path.read_text()
    manifest_path.write_text(text[: len(text) // 2])  # cut short, as by a full disk
    with pytest.raises(ValueError, match=r"manifest.json:1: not valid JSON .*rebuild the index"):
        open_index(tmp_path / "idx")


def test_failed_build_leaves_no_index_and_keeps_the_old_one(tmp_path, animals, monkeypatch):
    from openrag.retrieval.bm25 import BM25Writer

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    output = tmp_path / "idx"
    monkeypatch.setattr(BM25Writer, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(animals, output, show_progress=False)
    assert not output.exists()  # only the resumable build folder beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.building", "animals.jsonl"]
    monkeypatch.undo()
    build_index(animals, output, show_progress=False)  # resumed, then cleaned up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["animals.jsonl", "idx"]

    monkeypatch.setattr(BM25Writer, "finish", killed)
    write_jsonl(animals, ANIMALS[:2])
    with pytest.raises(KeyboardInterrupt):
        build_index(animals, output, overwrite=True, show_progress=False)
    assert len(open_index(output)) == 4  # the old index, whole


def test_bad_corpus_leaves_nothing_behind(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\nnot json\n')
    with pytest.raises(ValueError, match="line 3 is not JSON"):
        build_index(bad, tmp_path / "idx", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_index_command(tmp_path, animals, capsys):
    from openrag.cli import main

    def openrag(*argv):
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        return exit_.value.code, capsys.readouterr()

    code, out = openrag("index", "--corpus", str(animals), "--output", str(tmp_path / "idx"), "--quiet")
    assert code == 0 and "indexed 4 passages" in out.out
    code, out = openrag("index", "--corpus", str(animals), "--output", str(tmp_path / "idx"))
    assert code == 0 and "up to date" in out.out
    code, out = openrag("index", "--corpus", str(animals), "--output", str(tmp_path / "idx"), "--kind", "dense")
    assert code == 2 and "other settings" in out.err and "--overwrite" in out.err
    (tmp_path / "empty.jsonl").write_text("")
    code, out = openrag("index", "--corpus", str(tmp_path / "empty.jsonl"), "--output", str(tmp_path / "e"))
    assert code == 2 and "holds no passages" in out.err and not (tmp_path / "e").exists()


# --- fusion and metrics (golden values by hand) ------------------------------------------------------------------

def test_reciprocal_rank_fusion_golden():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert [item for item, _ in fused] == [1, 3, 2]
    assert [score for _, score in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
    assert reciprocal_rank_fusion([[5, 6], [6, 5]], k=1) == [(5, 1 / 2 + 1 / 3), (6, 1 / 3 + 1 / 2)]  # tie: first seen
    assert reciprocal_rank_fusion([], k=60) == []


def test_retrieval_recall_at_k_golden():
    assert retrieval_recall_at_k(["A", "B", "C"], ["A", "C"]) == 1.0
    assert retrieval_recall_at_k(["A", "A", "X"], ["A", "C"]) == 0.5
    assert retrieval_recall_at_k([], ["A"]) == 0.0
    assert retrieval_recall_at_k([" A "], ["A", "A"]) == 1.0
    with pytest.raises(ValueError, match="no gold titles"):
        retrieval_recall_at_k(["A"], [])
