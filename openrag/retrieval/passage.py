"""The passage a retriever returns, and the protocol every retriever follows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable


Hit = tuple[int, float]  # (row of a passage in an index, score): what the BM25, dense and hybrid retrievers rank


@dataclass(frozen=True)
class RetrievedPassage:
    """One passage of a corpus. ``score`` is the retriever's score (higher is better); None before retrieval."""

    title: str
    text: str
    id: str
    score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a batch of queries with the ``top_k`` best passages of each, best first."""

    def search(self, queries: list[str], top_k: int) -> list[list[RetrievedPassage]]: ...
