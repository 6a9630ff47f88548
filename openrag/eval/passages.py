"""The passages a question is answered with, and how well they cover its gold evidence.

Rows with a ranked list (``ctxs``/``top_contexts``: retriever output in rank order) are used as given.
Rows of the HotpotQA, 2Wiki and MuSiQue originals carry 10 or 20 *unranked* candidate paragraphs with the
gold ones mixed among distractors, often gold first; taking the first ``ndocs`` of those would leak the
answer position. They are ranked against the question first (BM25 over the row's own paragraphs), and the
gold recall at ``ndocs`` of that ranking says how much the ranking, not the model, limits the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

RANKERS = ("bm25", "given")


@dataclass
class Selection:
    passages: list  # the first ndocs, in the order the model sees them
    ranked_by: str  # "given" (the row's own order) or "bm25"
    gold_recall: float | None  # gold passages among the selected / gold passages in the row; None if unknown
    gold_total: int | None


def bm25_order(query: str, texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` from most to least BM25-relevant to ``query``; ties keep the row's order."""
    import bm25s

    if len(texts) < 2:
        return list(range(len(texts)))
    corpus = bm25s.tokenize(list(texts), stopwords="en", show_progress=False, return_ids=False)
    query_tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
    if not query_tokens:
        return list(range(len(texts)))
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    scores = retriever.get_scores(query_tokens)  # [len(texts)]
    return sorted(range(len(texts)), key=lambda i: (-float(scores[i]), i))


def passage_text(passage: Any) -> str:
    title = getattr(passage, "title", "") or ""
    return f"{title}\n{passage.text}" if title else passage.text


def select_passages(question: str, passages: list, ranked: bool, ndocs: int, ranker: str = "bm25") -> Selection:
    """The first ``ndocs`` passages after ranking unranked candidates with ``ranker``."""
    if ranker not in RANKERS:
        raise ValueError(f"unknown ranker {ranker!r}; choose one of {', '.join(RANKERS)}")
    order = list(range(len(passages)))
    ranked_by = "given"
    if not ranked and ranker == "bm25":
        order = bm25_order(question, [passage_text(p) for p in passages])
        ranked_by = "bm25"
    chosen = [passages[i] for i in order[: max(ndocs, 0)]]
    gold_total = sum(1 for p in passages if getattr(p, "is_gold", None))
    known = any(getattr(p, "is_gold", None) is not None for p in passages)
    if not known or gold_total == 0:
        return Selection(chosen, ranked_by, None, gold_total if known else None)
    found = sum(1 for p in chosen if getattr(p, "is_gold", None))
    return Selection(chosen, ranked_by, found / gold_total, gold_total)
