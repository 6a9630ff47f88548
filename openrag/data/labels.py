"""Labelling rules: which reflection tokens an instance gets, from the data's own annotations.

The rules (also in README, "Training data"), for a question with answer ``a``:

Relevance
  * A passage is gold when the data marks it (HotpotQA/2Wiki ``supporting_facts`` titles, MuSiQue and
    IRCoT ``is_supporting``, a ``ctxs`` flag ``is_gold``/``hasanswer``). A retrieved list without such
    flags takes as gold the passages that contain an answer string (normalised, whole words).
  * Gold passages are ``[Relevant]``; hard distractors are ``[Irrelevant]``. A non-gold passage that
    contains an answer string is never used as a distractor (its label would be a guess).

Support (after ``[Relevant]``)
  * ``[Fully supported]``: the whole gold chain of a multi-hop question, or the gold passage of a
    single-hop question (one gold passage, or an answer-bearing retrieved passage).
  * ``[Partially supported]``: one gold passage of a multi-hop question that contains the answer string,
    or any one gold passage when the answer is yes/no (one side of a comparison).
  * ``[No support / Contradictory]``: one gold passage of a multi-hop question that does not contain the
    answer (a bridge hop: relevant, but the answer is not in it).

Utility: how much of the response is backed by what the model was shown
  * 5 fully supported, 4 partially supported, 3 relevant but unsupported;
  * 2 the passage is irrelevant but the answer is closed-class (yes/no, one of the options the question
    names, or a multiple-choice letter), 1 the passage is irrelevant and nothing shown backs the answer.
  The ``[No Retrieval]`` instance (below) gets 2 by the same rule.

Retrieval (one decision per question)
  * A closed-class question (yes/no, or its answer is one of the options the question names) needs no
    retrieval: it gets ``[No Retrieval]{a}[Utility:2]``, and its evidence instances do not train the
    leading ``[Retrieval]``. Every other question (the data's questions are knowledge-intensive) trains
    ``[Retrieval]`` and gets no ``[No Retrieval]`` instance.

Distractor hardness (the passages closest to the question or to the gold titles)
  * unranked candidates: score = share of the question's content words found in the passage +
    share of the gold titles' content words found in the passage title; highest first, ties in list order;
  * retrieved lists: rank order (the retriever's closeness).
"""

from __future__ import annotations

from ..model.reflection import FULLY_SUPPORTED, NO_SUPPORT, PARTIALLY_SUPPORTED, REFLECTION_TOKENS
from ..tasks import evidence_chain, get_task
from ..passage import Passage, titled_text
from ..normalize import contains_answer, normalize_text
from .examples import QAExample

YES_NO = frozenset({"yes", "no"})
_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being which who whom whose "
    "what when where why how that this these those it its as than then did do does has have had not no "
    "same both also into about after before during between while he she they his her their there".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in normalize_text(text).split() if w not in _STOPWORDS}


def match_strings(ex: QAExample) -> list[str]:
    """The strings searched for in passages: for multiple choice the correct choice's text, not its letter."""
    return ex.answers[1:] if ex.choices else ex.answers


def is_yes_no(ex: QAExample) -> bool:
    return normalize_text(ex.answers[0]) in YES_NO


def is_closed_class(ex: QAExample) -> bool:
    """The question itself gives the answer's form: yes/no, an option it names, or a lettered choice."""
    if ex.choices or is_yes_no(ex):
        return True
    return contains_answer(ex.question, ex.answers)


def needs_retrieval(ex: QAExample) -> bool:
    return not is_closed_class(ex)


def gold_passages(ex: QAExample) -> list[Passage]:
    """Gold passages in reasoning order; for unflagged retrieved lists, the answer-bearing ones in rank order."""
    if any(p.is_gold for p in ex.passages):
        return ex.gold_passages
    if ex.ranked and all(p.is_gold is None for p in ex.passages):
        return [p for p in ex.passages if contains_answer(f"{p.title} {p.text}", match_strings(ex))]
    return []


def is_multi_hop(ex: QAExample, gold: list[Passage]) -> bool:
    return not ex.ranked and len(gold) >= 2


def single_support(ex: QAExample, passage: Passage, multi_hop: bool) -> str:
    """Support token for one gold passage on its own."""
    if not multi_hop:
        return FULLY_SUPPORTED
    if is_yes_no(ex) or contains_answer(passage.text, match_strings(ex)):
        return PARTIALLY_SUPPORTED
    return NO_SUPPORT


UTILITY_OF_SUPPORT = {FULLY_SUPPORTED: 5, PARTIALLY_SUPPORTED: 4, NO_SUPPORT: 3}


def utility_without_support(ex: QAExample) -> int:
    """Utility when nothing relevant was shown (an irrelevant passage, or no retrieval)."""
    return 2 if is_closed_class(ex) else 1


def hard_distractors(ex: QAExample, gold: list[Passage], n: int) -> list[Passage]:
    """The ``n`` non-gold passages closest to the question or the gold titles, never answer-bearing."""
    gold_ids = {id(p) for p in gold}
    answers = match_strings(ex)
    candidates = [
        p for p in ex.passages if id(p) not in gold_ids and not p.is_gold and not contains_answer(f"{p.title} {p.text}", answers)
    ]
    if ex.ranked:
        return candidates[:n]
    question = content_words(ex.question)
    titles = set().union(*(content_words(p.title) for p in gold)) if gold else set()

    def closeness(p: Passage) -> float:
        words = content_words(f"{p.title} {p.text}")
        score = len(question & words) / max(1, len(question))
        return score + len(titles & content_words(p.title)) / max(1, len(titles))

    ranked = sorted(enumerate(candidates), key=lambda ic: (-closeness(ic[1]), ic[0]))
    return [p for _, p in ranked[:n]]


def _clean(text: str) -> str:
    """Passage text with any reflection-token string removed: a stray ``</paragraph>`` would end the span."""
    for token in REFLECTION_TOKENS:
        text = text.replace(token, " ")
    return text


def render_passage(p: Passage) -> str:
    return titled_text(_clean(p.title), _clean(p.text))


def render_chain(passages: list[Passage]) -> str:
    """Multi-hop evidence in one paragraph (tasks.evidence_chain)."""
    return evidence_chain([render_passage(p) for p in passages])


def instance_input(ex: QAExample) -> str:
    """The instruction text: the question, or for multiple choice the ``arc_c`` task's prompt body
    (instruction, question and lettered choices), as ``openrag eval --task arc_c`` asks it."""
    return get_task("arc_c").body(ex.question, ex.choices) if ex.choices else ex.question
