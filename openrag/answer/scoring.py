"""Scoring (docs/method.md sections 5 and 6): the retrieval rules and their one decision, and each candidate's score.

Pure functions of the engine's log-probs. :data:`RULES` is the one registry of adaptive retrieval rules:
the pipeline decides with :func:`decide`, and so does ``openrag eval sweep`` at every threshold, so a
threshold means the same in both. A new rule is one row here (its signal, its side, how it is computed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model.reflection import GROUNDEDNESS_TOKENS, REFLECTION_TOKENS, RELEVANCE_TOKENS, RETRIEVAL_TOKENS, UTILITY_TOKENS
from ..registry import lookup

if TYPE_CHECKING:
    from .engine import RowResult

UTILITY_VALUES = (-1.0, -0.5, 0.0, 0.5, 1.0)  # [Utility:1] .. [Utility:5]
GROUNDEDNESS_VALUES = (1.0, 0.5, 0.0)  # fully, partially, not supported
# Token groups the engine reports, each in the order its log-probs come back.
WATCH = {
    "retrieval": RETRIEVAL_TOKENS,  # [Retrieval], [No Retrieval]
    "relevance": RELEVANCE_TOKENS,  # [Relevant], [Irrelevant]
    "groundedness": GROUNDEDNESS_TOKENS,
    "utility": UTILITY_TOKENS,
}


def group_shares(logprobs: Sequence[float]) -> list[float]:
    """p_i / sum_j p_j from log-probs, computed stably."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def token_probabilities(row: RowResult) -> list[float]:
    """Each generated token's probability (stop token included)."""
    return [math.exp(lp) for lp in row.logprobs]


# -- the retrieval rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalRule:
    """An adaptive retrieval rule: a value per question, compared with a threshold."""

    name: str
    signal: str  # the key of its value in Answer.signals and in a sweep record's "no_retrieval"
    retrieve_above: bool  # True: retrieve when value > threshold; False: when value < threshold
    from_answer: bool  # its value needs the answer generated after a forced [No Retrieval] (else: the prefill)
    value: Callable  # prefill rules: {group: log-probs at the first position} -> float; answer rules: RowResult -> float
    help: str

    @property
    def side(self) -> str:
        return ">" if self.retrieve_above else "<"


RULES: dict[str, RetrievalRule] = {
    r.name: r
    for r in (
        RetrievalRule("token", "p_retrieve", True, False, lambda first: group_shares(first["retrieval"])[0],
                      "P([Retrieval]) / (P([Retrieval]) + P([No Retrieval])) at the first position (Self-RAG)"),
        RetrievalRule("minp", "minp", False, True, lambda row: min(token_probabilities(row)),
                      "the smallest token probability of the [No Retrieval] answer (Open-RAG), over every generated "
                      "token: the answer's, its closing [Utility:k] and the end of sequence"),
        RetrievalRule("meanp", "meanp", False, True,
                      lambda row: sum(token_probabilities(row)) / len(row.logprobs),
                      "the mean token probability of the [No Retrieval] answer (Open-RAG), over the same tokens as minp"),
    )
}


def get_rule(name: str) -> RetrievalRule:
    return lookup(RULES, name, "retrieval rule")


def decide(rule: str, value: float | None, threshold: float) -> bool:
    """Whether ``rule`` retrieves for a question whose rule value is ``value``. A missing value (an empty
    no-retrieval answer has no token probabilities) counts as no confidence: the question retrieves."""
    r = get_rule(rule)
    if value is None:
        return True
    return value > threshold if r.retrieve_above else value < threshold


def prefill_signals(first: Mapping[str, list[float]]) -> dict[str, float]:
    """The values of every rule that needs only the prefill (the first position's watched log-probs)."""
    return {r.signal: r.value(first) for r in RULES.values() if not r.from_answer}


def answer_signals(row: RowResult) -> dict[str, float]:
    """The values of every rule computed on the answer after a forced ``[No Retrieval]``."""
    return {r.signal: r.value(row) for r in RULES.values() if r.from_answer}


ANSWER_SIGNALS = tuple(r.signal for r in RULES.values() if r.from_answer)


# -- candidates ---------------------------------------------------------------------------------------


def score_terms(row: RowResult) -> dict[str, float]:
    """Each term of the candidate score (docs/method.md section 6), unweighted; a term whose token never appears is 0."""
    seq = math.exp(sum(row.logprobs) / len(row.logprobs)) if row.logprobs else 0.0
    relevance = group_shares(row.first["relevance"])[0] if "relevance" in row.first else 0.0
    groundedness = utility = 0.0
    if "groundedness" in row.on_use:
        groundedness = sum(v * p for v, p in zip(GROUNDEDNESS_VALUES, group_shares(row.on_use["groundedness"][1])))
    if "utility" in row.on_use:
        utility = sum(v * p for v, p in zip(UTILITY_VALUES, group_shares(row.on_use["utility"][1])))
    return {"seq_score": seq, "relevance": relevance, "groundedness": groundedness, "utility": utility}


def candidate_score(terms: dict[str, float], opts) -> float:
    """The weighted sum of the score's terms (docs/method.md section 6) under ``opts`` (an AnswerOptions)."""
    score = opts.w_rel * terms["relevance"]
    if opts.use_seqscore:
        score += terms["seq_score"]
    if opts.use_groundness:
        score += opts.w_sup * terms["groundedness"]
    if opts.use_utility:
        score += opts.w_use * terms["utility"]
    return score


def choose(candidates: Sequence, closed: bool) -> str:
    """The best candidate's text; ``closed``: the scores of identical answers are summed first (the paper does so
    for closed tasks; AnswerOptions pools by default). Ties go to the earlier candidate."""
    if not closed:
        return max(candidates, key=lambda c: c.score).text  # max keeps the first of equals
    totals: dict[str, float] = {}
    for c in candidates:
        totals[c.text] = totals.get(c.text, 0.0) + c.score
    return max(totals, key=totals.get)


def postprocess(text: str, extra_tokens: Sequence[str] = ()) -> str:
    """Remove reflection tokens, end-of-sequence markers and newlines, then a leading ``#`` or ``:``."""
    for token in (*REFLECTION_TOKENS, "</s>", "<|endoftext|>", *extra_tokens):
        text = text.replace(token, "")
    text = text.replace("\n", "").strip()
    if len(text) > 1 and text[0] in "#:":
        text = text[1:].strip()
    return text
