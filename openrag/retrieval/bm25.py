"""Sparse retrieval with ``bm25s``; the index is saved in bm25s's own numpy + JSON files (no pickle).

:class:`BM25Writer` builds those files chunk by chunk, in memory bounded by one chunk plus the vocabulary (the score
matrix is written into memory-mapped ``.npy`` files), with bm25s's own tokenizer and scoring functions: the files
hold the same vocabulary and the same scores as ``bm25s.BM25().index()`` over all the texts at once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from openrag.outputs import write_atomic
from openrag.retrieval.passage import Hit


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"  # a bm25s stopword language, or "" for none

    @property
    def stopword_language(self) -> str | None:
        """``stopwords`` as ``bm25s.tokenize`` takes it (None: none)."""
        return self.stopwords or None


class BM25Retriever:
    """Ranks rows of an index by BM25 over ``title + text``; rows that share no term with a query are dropped."""

    def __init__(self, model, settings: BM25Settings):
        self.model = model
        self.settings = settings

    @classmethod
    def from_texts(cls, texts: list[str], settings: BM25Settings = BM25Settings(), show_progress: bool = False) -> "BM25Retriever":
        """An index of ``texts`` in memory (row i = texts[i])."""
        import bm25s

        tokens = bm25s.tokenize(texts, stopwords=settings.stopword_language, show_progress=show_progress)
        model = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        model.index(tokens, show_progress=show_progress)
        return cls(model, settings)

    @classmethod
    def load(cls, folder: str | Path, settings: BM25Settings) -> "BM25Retriever":
        import bm25s

        model = bm25s.BM25.load(str(folder), mmap=True, load_corpus=False, allow_pickle=False)
        return cls(model, settings)

    @staticmethod
    def query_tokens(queries: list[str], settings: BM25Settings = BM25Settings()) -> list[list[str]]:
        """Each query's terms as the index sees them (stopwords out)."""
        import bm25s

        return bm25s.tokenize(queries, stopwords=settings.stopword_language, return_ids=False, show_progress=False)

    def _tokens(self, queries: list[str]) -> list[list[str]]:
        return self.query_tokens(queries, self.settings)

    def rank(self, queries: list[str], depth: int) -> list[list[Hit]]:
        """The best ``depth`` rows of each query (top-k selection), rows with no shared term dropped."""
        depth = min(depth, self.model.scores["num_docs"])
        rows, scores = self.model.retrieve(self._tokens(queries), k=depth, show_progress=False)  # [Q, depth] each
        return [[(int(r), float(s)) for r, s in zip(row, score) if s > 0] for row, score in zip(rows, scores)]

    def order(self, query: str) -> list[int]:
        """Every row, from most to least relevant to ``query``; equal scores keep the rows' order."""
        tokens = self._tokens([query])[0]
        n = self.model.scores["num_docs"]
        if not tokens:
            return list(range(n))
        scores = self.model.get_scores(tokens)  # [N]
        return sorted(range(n), key=lambda i: (-float(scores[i]), i))


class BM25Writer:
    """Writes a BM25 index folder chunk by chunk. ``add`` keeps each chunk's term counts in ``CHUNKS/bm25-K.npz``
    (plus the chunk's own vocabulary); ``finish`` turns them into bm25s's files in two streaming passes: document
    frequencies and lengths first, then the scores, placed straight into the memory-mapped CSC arrays."""

    name = "bm25"

    def __init__(self, settings: BM25Settings):
        self.settings = settings

    @staticmethod
    def _file(chunks: Path, k: int) -> Path:
        return chunks / f"bm25-{k:06d}.npz"

    def done(self, chunks: Path, k: int) -> bool:
        return self._file(chunks, k).is_file()

    def add(self, chunks: Path, k: int, texts: list[str]) -> None:
        import bm25s

        tokenized = bm25s.tokenize(texts, stopwords=self.settings.stopword_language, show_progress=False)
        lengths = np.array([len(ids) for ids in tokenized.ids], dtype=np.int64)  # [C] tokens per passage
        flat = np.fromiter(chain.from_iterable(tokenized.ids), dtype=np.int64, count=int(lengths.sum()))
        docs = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        keys, tf = np.unique((docs << 32) | flat, return_counts=True)  # (passage, term) pairs, passage-major
        with write_atomic(self._file(chunks, k), "wb") as f:
            np.savez(f, terms=(keys & 0xFFFFFFFF).astype(np.int32), tf=tf.astype(np.float32),
                     unique=np.bincount(keys >> 32, minlength=len(texts)).astype(np.int32), lengths=lengths.astype(np.int32),
                     vocab=np.array(list(tokenized.vocab), dtype=object).astype(str))  # chunk-local ids, in id order

    def finish(self, folder: Path, sources: list[Path], passages: int, show_progress: bool = False) -> None:
        """Write bm25s's files into ``folder/bm25`` from chunk k's counts in ``sources[k]``."""
        import bm25s
        from bm25s import scoring

        s = self.settings
        vocab: dict[str, int] = {}
        frequencies = np.zeros(0, dtype=np.int64)  # [V] passages holding each term
        total_length = 0
        for k, chunks in enumerate(sources):  # pass 1: vocabulary in first-seen order, document frequencies, lengths
            with np.load(self._file(chunks, k), allow_pickle=False) as chunk:
                terms, counts = np.unique(self._global_ids(vocab, chunk["vocab"], grow=True)[chunk["terms"]],
                                          return_counts=True)
                if len(vocab) > len(frequencies):  # grow by doubling: O(V) in all, not per chunk
                    frequencies = np.pad(frequencies, (0, max(len(vocab) - len(frequencies), len(frequencies))))
                frequencies[terms] += counts
                total_length += int(chunk["lengths"].astype(np.int64).sum())
        frequencies = frequencies[:len(vocab)]
        model = bm25s.BM25(k1=s.k1, b=s.b, method=s.method)
        average = np.float64(total_length) / passages if passages else np.float64(0)
        df = dict(enumerate(frequencies.tolist()))
        # bm25s's private scorers: its public API scores only a whole corpus in memory (BM25.index), and a chunked
        # build must give the very scores it gives. Their names and signatures are those of bm25s 0.2.0-0.3.16,
        # hence the pin in pyproject.toml (bm25s<0.4); test_retrieval_scale.py compares the two indexes file by file.
        idf = scoring._build_idf_array(df, passages, scoring._select_idf_scorer(model.idf_method), model.dtype)  # [V]
        tfc = scoring._select_tfc_scorer(model.method)
        nonoccurrence = None
        if model.method in model.methods_requiring_nonoccurrence:
            nonoccurrence = scoring._build_nonoccurrence_array(
                df, passages, scoring._select_idf_scorer(model.idf_method), tfc, average, average,
                model.k1, model.b, model.delta, model.dtype)

        out = folder / "bm25"
        out.mkdir()
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(frequencies, out=indptr[1:])
        nnz = int(indptr[-1])
        data = _open_array(out / "data.csc.index.npy", model.dtype, nnz)  # [nnz] scores, column by column
        rows = _open_array(out / "indices.csc.index.npy", model.int_dtype, nnz)  # [nnz] passage of each score
        heads = indptr[:-1].copy()  # [V] next free slot of each term's column
        first = 0
        for k, chunks in enumerate(sources):  # pass 2: scores, placed column by column (counting sort)
            with np.load(self._file(chunks, k), allow_pickle=False) as chunk:
                terms = self._global_ids(vocab, chunk["vocab"])[chunk["terms"]]  # [P] global term ids
                counts = chunk["unique"].astype(np.int64)
                docs = np.repeat(np.arange(first, first + len(counts), dtype=np.int64), counts)  # [P]
                lengths = np.repeat(chunk["lengths"].astype(np.int64), counts)  # [P]
                scores = idf[terms] * tfc(tf_array=chunk["tf"], l_d=lengths, l_avg=average, k1=model.k1, b=model.b,
                                          delta=model.delta)
                if nonoccurrence is not None:
                    scores -= nonoccurrence[terms]
                if len(terms):
                    order = np.argsort(terms, kind="stable")  # by term, passages ascending within a term
                    terms, docs, scores = terms[order], docs[order], scores[order]
                    starts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])  # [G] first pair of each term
                    sizes = np.diff(np.r_[starts, len(terms)])  # [G]
                    slots = heads[terms] + np.arange(len(terms)) - np.repeat(starts, sizes)
                    data[slots] = scores
                    rows[slots] = docs
                    heads[terms[starts]] += sizes
                first += len(counts)
        if isinstance(data, np.memmap):
            data.flush()
            rows.flush()
        del data, rows
        np.save(out / "indptr.csc.index.npy", indptr, allow_pickle=False)
        if "" not in vocab:  # what bm25s's index() adds for queries with no known term
            vocab[""] = len(vocab)
        # bm25s writes its own parameter and vocabulary files: save an empty model beside, keep those files
        model.scores = {"data": np.zeros(0, model.dtype), "indices": np.zeros(0, model.int_dtype),
                        "indptr": np.zeros(1, np.int64), "num_docs": passages}
        model.vocab_dict = vocab
        model.nonoccurrence_array = nonoccurrence
        meta = folder / "bm25.meta"
        model.save(str(meta), allow_pickle=False, show_progress=False)
        for name in ("params.index.json", "vocab.index.json", "nonoccurrence_array.index.npy"):
            if (meta / name).exists():
                os.replace(meta / name, out / name)
        shutil.rmtree(meta)

    @staticmethod
    def _global_ids(vocab: dict[str, int], local: np.ndarray, grow: bool = False) -> np.ndarray:
        """``[L]`` global id of each of a chunk's terms (adding new terms to ``vocab`` when ``grow``)."""
        if grow:
            for term in local.tolist():
                vocab.setdefault(term, len(vocab))
        return np.array([vocab[term] for term in local.tolist()], dtype=np.int64)


def _open_array(path: Path, dtype, size: int) -> np.ndarray:
    """A ``.npy`` file of ``size`` items, memory-mapped for writing (numpy cannot map an empty one: saved at once)."""
    if size == 0:
        np.save(path, np.zeros(0, dtype=dtype), allow_pickle=False)
        return np.zeros(0, dtype=dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(size,))
