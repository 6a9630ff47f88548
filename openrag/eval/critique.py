"""Whether the model's critique decides, not only ranks: relevance and retrieval-need metrics.

Pure functions of the per-question records ``openrag eval`` writes:

* relevance, over every shown passage whose data has a gold flag: ``relevance_accuracy`` and
  ``relevance_balanced_accuracy`` (mean of the accuracies on gold and on non-gold passages) at the model's
  own decision point, P([Relevant]) share > 0.5, and ``relevance_auc``, how well the share ranks gold
  above non-gold passages (0.5: no skill);
* retrieval need, over sweep records (which hold the forced no-retrieval answer): ``retrieval_need_auc``,
  how well the token rule's P([Retrieval]) share ranks the questions whose no-retrieval answer is wrong
  above those whose no-retrieval answer is right.
"""

from __future__ import annotations

from typing import Sequence

from ..answer.scoring import RULES

RELEVANCE_DECISION = 0.5  # the model's own decision point: [Relevant] likelier than [Irrelevant]


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random negative, ties
    counting one half (Mann-Whitney U from average ranks). None when either class is empty."""
    n_pos = sum(bool(p) for p in positive)
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1  # ranks i+1 .. j+1 shared by a run of ties
        rank_sum += mean_rank * sum(bool(positive[order[k]]) for k in range(i, j + 1))
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def relevance_metrics(records: Sequence[dict]) -> dict:
    """Relevance accuracy, balanced accuracy and AUC against the data's gold flags (see the module doc)."""
    judged = [(float(c["relevance"]), bool(c["passage"]["is_gold"])) for r in records for c in r.get("candidates") or ()
              if c.get("passage", {}).get("is_gold") is not None and c.get("relevance") is not None]
    out: dict = {"relevance_accuracy": None, "relevance_balanced_accuracy": None, "relevance_auc": None, "relevance_n": len(judged)}
    if not judged:
        return out
    said = [(share > RELEVANCE_DECISION, gold) for share, gold in judged]
    out["relevance_accuracy"] = sum(s == gold for s, gold in said) / len(said)
    out["relevance_balanced_accuracy"] = balanced_accuracy([s for s, _ in judged], [g for _, g in judged])
    out["relevance_auc"] = auc([s for s, _ in judged], [g for _, g in judged])
    return out


def balanced_accuracy(shares: Sequence[float], positive: Sequence[bool]) -> float | None:
    """The mean of the accuracies on positives and on negatives at the decision point (share > 0.5);
    None when either class is empty."""
    said = [(share > RELEVANCE_DECISION, bool(p)) for share, p in zip(shares, positive)]
    per_class = [[s == p for s, p in said if p == cls] for cls in (True, False)]
    if not all(per_class):
        return None
    return sum(sum(hits) / len(hits) for hits in per_class) / 2


def retrieval_need_auc(records: Sequence[dict], headline: str) -> dict:
    """AUC of P([Retrieval]) share against "the no-retrieval answer is wrong" (headline metric below 1)."""
    key = RULES["token"].signal
    pairs = [(float(r["no_retrieval"][key]), r["no_retrieval"]["metrics"][headline] < 1.0) for r in records
             if isinstance(r.get("no_retrieval"), dict) and r["no_retrieval"].get(key) is not None]
    value = auc([p for p, _ in pairs], [w for _, w in pairs]) if pairs else None
    return {"retrieval_need_auc": value, "retrieval_need_n": len(pairs)}
