"""The passages a question is answered with, and how well they cover its gold evidence.

Rows with a ranked list (``ctxs``/``top_contexts``: retriever output in rank order) are used as given.
Rows of the HotpotQA, 2Wiki and MuSiQue originals carry 10 or 20 *unranked* candidate paragraphs with the
gold ones mixed among distractors, often gold first; taking the first ``ndocs`` of those would leak the
answer position. They are ranked against the question first (BM25 over the row's own paragraphs), and the
gold recall at ``ndocs`` of that ranking says how much the ranking, not the model, limits the score.

Rankers: ``bm25`` (default, over the row's own paragraphs), ``dense`` (cosine similarity with the retrieval
package's bundled MiniLM encoder), ``hybrid`` (reciprocal-rank fusion of the two), ``given`` (the row's order).
Each is the retrieval package's retriever of that kind over the row's paragraphs, so a row is ranked here as
an index of its paragraphs would rank it. :func:`read_questions` gives a QA file's questions with their
passages chosen this way (``openrag ask --questions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..data.readers import read_examples
from ..passage import Passage, titled_text
from ..registry import check_choice
from ..tasks import get_task

RANKERS = ("bm25", "dense", "hybrid", "given")


@dataclass
class Selection:
    passages: list  # the first ndocs, in the order the model sees them
    ranked_by: str  # the ranker's name, or "given" (the row's own order)
    gold_recall: float | None  # gold passages among the selected / gold passages in the row; None if unknown
    gold_total: int | None


def bm25_order(query: str, texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` from most to least BM25-relevant to ``query``; ties keep the row's order. The
    index's BM25 (``openrag index --kind bm25``, default settings) over these texts."""
    from ..retrieval.bm25 import BM25Retriever

    if len(texts) < 2 or not BM25Retriever.query_tokens([query])[0]:
        return list(range(len(texts)))
    return BM25Retriever.from_texts(list(texts)).order(query)


class DenseOrder:
    """Orders a row's passages by cosine similarity to the question with the dense retriever's encoder
    (loaded once)."""

    def __init__(self, device: str | None = None):
        from ..retrieval.dense import DenseRetriever, DenseSettings

        self.retriever = DenseRetriever(None, DenseSettings(), device=device)
        self.retriever.encoder  # noqa: B018 - load it now, once, not on the first row

    def __call__(self, query: str, texts: Sequence[str]) -> list[int]:
        if len(texts) < 2:
            return list(range(len(texts)))
        vectors = self.retriever.encode([query, *texts])  # [1 + N, D], unit vectors
        scores = vectors[1:] @ vectors[0]  # [N]
        return sorted(range(len(texts)), key=lambda i: (-float(scores[i]), i))


class HybridOrder:
    """Reciprocal-rank fusion of the BM25 and dense orders (the retrieval package's fusion)."""

    def __init__(self, device: str | None = None):
        self.dense = DenseOrder(device)

    def __call__(self, query: str, texts: Sequence[str]) -> list[int]:
        from ..retrieval.hybrid import reciprocal_rank_fusion

        fused = reciprocal_rank_fusion([bm25_order(query, texts), self.dense(query, texts)])
        return [i for i, _ in sorted(fused, key=lambda hit: (-hit[1], hit[0]))]


@dataclass
class Ranker:
    name: str
    order: Callable[[str, Sequence[str]], list[int]] | None  # indices best first; None keeps the row's order


def make_ranker(name: str, device: str | None = None) -> Ranker:
    """The ranker called ``name`` (dense and hybrid load their encoder here, once)."""
    check_choice(RANKERS, name, "ranker")
    build = {"bm25": lambda: bm25_order, "dense": lambda: DenseOrder(device), "hybrid": lambda: HybridOrder(device), "given": lambda: None}
    return Ranker(name, build[name]())


def select_passages(question: str, passages: list, ranked: bool, ndocs: int, ranker: Ranker | str = "bm25") -> Selection:
    """The first ``ndocs`` passages, after ordering unranked candidates with ``ranker``; ranked lists keep
    their order."""
    ranker = make_ranker(ranker) if isinstance(ranker, str) else ranker
    order = list(range(len(passages)))
    ranked_by = "given"
    if not ranked and ranker.order is not None:
        order = ranker.order(question, [titled_text(p.title, p.text) for p in passages])
        ranked_by = ranker.name
    chosen = [passages[i] for i in order[: max(ndocs, 0)]]
    gold_total = sum(1 for p in passages if getattr(p, "is_gold", None))
    known = any(getattr(p, "is_gold", None) is not None for p in passages)
    if not known or gold_total == 0:
        return Selection(chosen, ranked_by, None, gold_total if known else None)
    found = sum(1 for p in chosen if getattr(p, "is_gold", None))
    return Selection(chosen, ranked_by, found / gold_total, gold_total)


def read_questions(path: str, ndocs: int, with_index: bool, task: str = "multihop") -> tuple[list, list[list[Passage] | None]]:
    """The questions of a QA file (any format :func:`openrag.data.readers.read_examples` reads) and the passages
    each is answered with: its own, the first ``ndocs`` after BM25 ranking of unranked candidates, or None for
    every row when an index answers instead. A row's answer choices (ARC) must suit ``task``
    (tasks.Task.check_choices): else an error naming the row's file and line."""
    examples = list(read_examples(path, passages_required=not with_index))
    if not examples:
        raise ValueError(f"{path}: no question could be read")
    checked = get_task(task)
    for ex in examples:
        try:
            checked.check_choices(ex.choices)
        except ValueError as err:
            raise ValueError(f"{ex.source}: {err}") from None
    if with_index:
        return examples, [None] * len(examples)
    ranker = make_ranker("bm25")
    return examples, [select_passages(ex.question, list(ex.passages), ex.ranked, ndocs, ranker).passages for ex in examples]
