"""What a retriever ranks and returns: the protocol every retriever follows (its passages are
:class:`openrag.passage.Passage`, with ``id`` and ``score`` set)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from openrag.passage import Passage

Hit = tuple[int, float]  # (row of a passage in an index, score): what the BM25, dense and hybrid retrievers rank


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a batch of queries with the ``top_k`` best passages of each, best first."""

    def search(self, queries: list[str], top_k: int) -> list[list[Passage]]: ...
