"""Hybrid retrieval: BM25 and dense rankings merged by reciprocal-rank fusion (Cormack et al., 2009)."""

from __future__ import annotations

from collections import defaultdict

from openrag.retrieval.passage import Hit


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> list[Hit]:
    """Each item scores sum over rankings of 1 / (k + rank), rank from 1; best first, ties in order of first sight."""
    scores: dict[int, float] = defaultdict(float)
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] += 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda hit: -hit[1])


class HybridRetriever:
    """Fuses the top ``depth`` rows of each retriever; the fused score is the RRF score."""

    def __init__(self, retrievers: list, rrf_k: int = 60, depth: int = 50):
        self.retrievers = retrievers
        self.rrf_k = rrf_k
        self.depth = depth

    def rank(self, queries: list[str], depth: int) -> list[list[Hit]]:
        per_retriever = [r.rank(queries, max(depth, self.depth)) for r in self.retrievers]  # [R][Q][hits]
        fused = []
        for q in range(len(queries)):
            rankings = [[row for row, _ in hits[q]] for hits in per_retriever]
            fused.append(reciprocal_rank_fusion(rankings, self.rrf_k)[:depth])
        return fused
