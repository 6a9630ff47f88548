"""Reranking: a cross-encoder re-scores the first-stage passages of each query (the ``--rerank`` stage).

Any sentence-transformers ``CrossEncoder`` (a local folder or a hub name, e.g. ``cross-encoder/ms-marco-MiniLM-L6-v2``)
reads ``(query, title\\ntext)`` pairs and gives each a relevance score; the passages are reordered by it, best first,
and carry it as their score. No package here ships cross-encoder weights, so openrag bundles none: name one that
is on disk or reachable. An index opened with a reranker (``SearchSettings(rerank=...)``, stored by ``openrag index
--rerank``) ranks its first ``rerank_depth`` passages with its own retriever and returns the reranked top k.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

import numpy as np

from openrag.localpaths import check_local_or_hub
from openrag.passage import Passage, titled_text


class CrossEncoderReranker:
    def __init__(self, model: str, device: str | None = None, batch_size: int = 32, max_length: int = 512,
                 encoder=None):
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        if encoder is not None:
            self.model = encoder  # given: the cached_property never loads one
        else:
            check_local_or_hub(model, "cross-encoder (--rerank)")

    @cached_property
    def model(self):
        """The sentence-transformers ``CrossEncoder``, loaded on first use so that opening an index stays fast."""
        from sentence_transformers import CrossEncoder

        return CrossEncoder(self.model_name, device=self.device, max_length=self.max_length)

    def scores(self, query: str, passages: list[Passage]) -> np.ndarray:
        """``[P]`` the cross-encoder's score of each (query, passage) pair."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, titled_text(p.title, p.text)) for p in passages]
        return np.asarray(self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False,
                                             convert_to_numpy=True), dtype=np.float32).reshape(len(pairs))

    def rerank(self, queries: list[str], candidates: list[list[Passage]]) -> list[list[Passage]]:
        """Each query's candidates, best cross-encoder score first (ties keep the first stage's order)."""
        out = []
        for query, passages in zip(queries, candidates):
            scores = self.scores(query, passages)
            order = sorted(range(len(passages)), key=lambda i: -float(scores[i]))
            out.append([replace(passages[i], score=float(scores[i])) for i in order])
        return out
