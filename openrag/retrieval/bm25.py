"""Sparse retrieval with ``bm25s``; the index is saved in bm25s's own numpy + JSON files (no pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openrag.retrieval.passage import Hit


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"  # a bm25s stopword language, or "" for none


class BM25Retriever:
    """Ranks rows of an index by BM25 over ``title + text``; rows that share no term with a query are dropped."""

    def __init__(self, model, settings: BM25Settings):
        self.model = model
        self.settings = settings

    @classmethod
    def from_texts(cls, texts: list[str], settings: BM25Settings = BM25Settings(), show_progress: bool = False) -> "BM25Retriever":
        """An index of ``texts`` in memory (row i = texts[i])."""
        import bm25s

        tokens = bm25s.tokenize(texts, stopwords=settings.stopwords or None, show_progress=show_progress)
        model = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        model.index(tokens, show_progress=show_progress)
        return cls(model, settings)

    @classmethod
    def build(cls, texts: list[str], folder: str | Path, settings: BM25Settings, show_progress: bool = True) -> "BM25Retriever":
        retriever = cls.from_texts(texts, settings, show_progress)
        retriever.model.save(str(folder), allow_pickle=False, show_progress=False)
        return retriever

    @classmethod
    def load(cls, folder: str | Path, settings: BM25Settings) -> "BM25Retriever":
        import bm25s

        model = bm25s.BM25.load(str(folder), mmap=True, load_corpus=False, allow_pickle=False)
        return cls(model, settings)

    @staticmethod
    def query_tokens(queries: list[str], settings: BM25Settings = BM25Settings()) -> list[list[str]]:
        """Each query's terms as the index sees them (stopwords out)."""
        import bm25s

        return bm25s.tokenize(queries, stopwords=settings.stopwords or None, return_ids=False, show_progress=False)

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
