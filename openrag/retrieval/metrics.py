"""Retrieval metrics as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def retrieval_recall_at_k(retrieved: Sequence[str], gold_titles: Iterable[str]) -> float:
    """Fraction of the distinct gold titles found among the retrieved titles (the top k, in rank order).

    Titles are compared after stripping surrounding whitespace; a title retrieved twice (two passages of one
    document) counts once. Raises ValueError when there are no gold titles: such a question has no recall.
    """
    gold = {title.strip() for title in gold_titles}
    if not gold:
        raise ValueError("no gold titles: retrieval recall is undefined for this question")
    found = {title.strip() for title in retrieved} & gold
    return len(found) / len(gold)
