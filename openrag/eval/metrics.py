"""Answer metrics of the paper's evaluation (docs/method.md section 7), as pure functions of strings.

``hotpotem`` follows the official HotpotQA script that Open-RAG's evaluation copies: normalise (lower-case,
drop punctuation, drop the articles a/an/the, collapse spaces: :func:`openrag.normalize.normalize_answer`, which
says why training labels normalise otherwise), then exact match and token F1 with precision
and recall against the *first* gold answer; F1 is 0 when either side normalises to yes/no/noanswer and the
two differ. ``match`` is Self-RAG's: some gold answer occurs in the raw prediction (case-sensitive, as the
published PopQA/TriviaQA numbers were computed); ``match_norm`` does the same on normalised text.
``accuracy`` (PubHealth, ARC-Challenge) compares the label read from the prediction with the gold label.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..normalize import normalize_answer
from ..registry import unknown

_YES_NO = ("yes", "no", "noanswer")


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


@dataclass(frozen=True)
class TokenF1:
    f1: float
    precision: float
    recall: float


def token_f1(prediction: str, gold: str) -> TokenF1:
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    zero = TokenF1(0.0, 0.0, 0.0)
    if (pred in _YES_NO or ref in _YES_NO) and pred != ref:
        return zero
    pred_tokens, ref_tokens = pred.split(), ref.split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return zero
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return TokenF1(2 * precision * recall / (precision + recall), precision, recall)


def match(prediction: str, golds: list[str]) -> float:
    """Self-RAG's ``match``: 1 if any gold answer is a substring of the prediction, as written."""
    return float(any(g in prediction for g in golds))


def match_normalized(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred for g in golds))


_LEADING_LABEL = re.compile(r"^\s*[\(\[]?([A-Z0-9])(?:[\)\]\.:,]|\s*$)")
_ANSWER_IS = re.compile(r"\banswer is:?\s*[\(\[]?([A-Z0-9])\b")
_TRUE_FALSE = {"true": "true", "supports": "true", "supported": "true", "false": "false", "refutes": "false"}


def closed_label(prediction: str, labels: list[str] | None = None, choices: list[str] | None = None) -> str:
    """The label a closed-set answer names.

    Multiple choice (``labels`` like A-D with their ``choices`` texts): a leading label (``C``, ``(C)``,
    ``C.``, ``C: text``; not ``A`` followed by a word, which is the article), or "answer is C", else the choice whose normalised text the prediction contains (the longest such).
    True/false tasks (no labels): the first of true/false/supports/refutes among the words, flipped when
    "not" comes just before it ("not supported" is false). Otherwise the
    normalised prediction itself. Self-RAG took the *last* label letter occurring anywhere in the text,
    which reads the article "A" of any sentence as choice A; this does not.
    """
    if labels:
        upper = [label.upper() for label in labels]
        for pattern in (_LEADING_LABEL.match(prediction), _ANSWER_IS.search(prediction)):
            if pattern and pattern.group(1).upper() in upper:
                return pattern.group(1).upper()
        pred = normalize_answer(prediction)
        found = [(len(normalize_answer(c)), label) for label, c in zip(labels, choices or []) if normalize_answer(c) and normalize_answer(c) in pred]
        if found:
            return max(found)[1].upper()
        return pred
    words = normalize_answer(prediction).split()
    for i, word in enumerate(words):
        if word in _TRUE_FALSE:
            label = _TRUE_FALSE[word]
            negated = i > 0 and words[i - 1] == "not"  # "not true", "not supported"
            return ("false" if label == "true" else "true") if negated else label
    return normalize_answer(prediction)


def accuracy(prediction: str, gold: str, labels: list[str] | None = None, choices: list[str] | None = None) -> float:
    label = closed_label(prediction, labels, choices)
    gold_label = gold.upper() if labels else _TRUE_FALSE.get(normalize_answer(gold), normalize_answer(gold))
    return float(label == gold_label)


def score_answer(metric: str, prediction: str, answers: list[str], labels: list[str] | None = None, choices: list[str] | None = None) -> dict[str, float]:
    """Every number the task's ``metric`` reports for one prediction; ``answers[0]`` is the main gold.

    hotpotem: ``em, f1, precision, recall`` against the first answer, ``em_any, f1_any`` over all of them
    (the aliases); match: ``match, match_norm`` plus ``em_any, f1_any``; accuracy: ``accuracy``.
    """
    if not answers:
        raise ValueError("a question without gold answers cannot be scored")
    if metric == "accuracy":
        return {"accuracy": accuracy(prediction, answers[0], labels, choices)}
    em_any = max(exact_match(prediction, a) for a in answers)
    f1_any = max(token_f1(prediction, a).f1 for a in answers)
    if metric == "hotpotem":
        first = token_f1(prediction, answers[0])
        return {
            "em": exact_match(prediction, answers[0]),
            "f1": first.f1,
            "precision": first.precision,
            "recall": first.recall,
            "em_any": em_any,
            "f1_any": f1_any,
        }
    if metric == "match":
        return {"match": match(prediction, answers), "match_norm": match_normalized(prediction, answers), "em_any": em_any, "f1_any": f1_any}
    raise unknown("metric", metric, METRICS)


METRICS = ("hotpotem", "match", "accuracy")
HEADLINE = {"hotpotem": "em", "match": "match", "accuracy": "accuracy"}
# Every number score_answer reports, in the order a reader looks for them (summaries and reports show them so).
SCORES = ("em", "f1", "precision", "recall", "em_any", "f1_any", "match", "match_norm", "accuracy")
