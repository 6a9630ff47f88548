"""The normalised QA record every reader produces, and how bad input rows are reported.

Every input format (HotpotQA, 2WikiMultihopQA, MuSiQue, IRCoT, Self-RAG ``ctxs``, ``openrag_bench``)
becomes a :class:`QAExample`; the builder, the evaluator and the retrievers only ever see this record.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from ..normalize import normalize_text
from ..passage import Passage

log = logging.getLogger(__name__)


@dataclass
class SubQuestion:
    """One single-hop fact inside a multi-hop row: a question, its answer and the passage that holds it."""

    question: str
    answer: str
    passage: int  # index into the row's ``passages``


@dataclass
class QAExample:
    id: str
    question: str
    answers: list[str]  # answers[0] is the main gold answer, then aliases
    passages: list[Passage]
    ranked: bool  # True: retrieved list in rank order; False: unranked candidate paragraphs
    dataset: str
    source: str  # "file:line" of the row it came from
    choices: list[str] | None = None  # multiple choice (ARC): choice texts, lettered A, B, C, ... in order
    answer_key: str | None = None  # multiple choice: the letter of the correct choice
    supporting_titles: list[str] | None = None  # gold titles in reasoning order, where the data says
    sub_questions: list[SubQuestion] = field(default_factory=list)  # single-hop facts, where the data names them

    @property
    def gold_passages(self) -> list[Passage]:
        """Gold passages, in reasoning order (``supporting_titles``) where known, else in list order."""
        gold = [p for p in self.passages if p.is_gold]
        if not self.supporting_titles:
            return gold
        order = {t: i for i, t in reversed(list(enumerate(self.supporting_titles)))}
        return sorted(gold, key=lambda p: order.get(p.title, len(order)))  # sorted() is stable


class RowError(ValueError):
    """One bad input row: where it is and which field is wrong."""

    def __init__(self, file: str, line: int | None, field: str, message: str):
        self.file, self.line, self.field, self.message = str(file), line, field, message
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: field {field!r}: {message}")


@dataclass
class ErrorLog:
    """Counts bad rows and skips them; with ``strict`` the first one is raised instead."""

    strict: bool = False
    errors: list[RowError] = field(default_factory=list)

    def report(self, err: RowError) -> None:
        if self.strict:
            raise err
        log.warning("skipped %s", err)
        self.errors.append(err)

    @property
    def count(self) -> int:
        return len(self.errors)

    def by_field(self) -> dict[str, int]:
        return dict(Counter(e.field for e in self.errors))

    def by_file(self) -> dict[str, int]:
        return dict(Counter(e.file for e in self.errors))


def normalize_question(question: str) -> str:
    """The key that decides whether two questions are the same (used by ``--exclude``)."""
    return normalize_text(question)
