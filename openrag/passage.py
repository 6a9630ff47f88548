"""A passage of evidence, declared once: what the data readers produce, the retrievers return, the evaluation
selects and the pipeline answers from.

Also the one way a passage is written as one text (:func:`titled_text`: ``title``, newline, ``text``), which the
indexes, the rankers, the training data and the prompts use, and the one way a passage is read from what a
caller gives (:func:`read_passage`: a dict, a string or a Passage). This module imports nothing of openrag but
:mod:`openrag.errors`, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Passage:
    title: str = ""
    text: str = ""
    id: str | None = None  # its id in a corpus (retrieved passages); None where the data gives none
    score: float | None = None  # the retriever's score (higher is better), or the data's; None: not ranked
    is_gold: bool | None = None  # the data's gold flag; None: the data does not say (retrieved lists)
    chained: int = 0  # n > 0: the first n passages of a question joined as one multi-hop chain (AnswerOptions.chain)

    def to_dict(self) -> dict:
        """``{title, text}`` and each of ``id``, ``score``, ``is_gold``, ``chained`` that is known."""
        data = {"title": self.title, "text": self.text}
        data.update({k: v for k, v in (("id", self.id), ("score", self.score), ("is_gold", self.is_gold)) if v is not None})
        if self.chained:
            data["chained"] = self.chained
        return data


def titled_text(title: str, text: str, keep_empty_title: bool = False) -> str:
    """A passage as one text: ``title\\ntext``, or the text alone when it has no title (``keep_empty_title``: the
    newline stays, as the released single-hop prompts write an untitled passage)."""
    return f"{title}\n{text}" if title or keep_empty_title else text


def read_passage(item, where: str = "passage") -> Passage:
    """A Passage from a Passage, a string (its text), a ``{title, text}`` dict (``paragraph_text`` is read for
    ``text``; ``id``, ``score`` and ``is_gold`` are kept), or any object with ``text`` (and ``title``) attributes.
    Anything else, or a field of the wrong type, is an InputError that names ``where`` and the field."""
    if isinstance(item, Passage):
        return item
    if isinstance(item, str):
        return Passage(text=item)
    if isinstance(item, dict):
        text = item.get("text", item.get("paragraph_text"))
        title = item.get("title")
        if text is None:
            raise InputError(f"{where}: a passage needs a 'text' field; got the fields {sorted(item)}")
        for name, value in (("text", text), ("title", title)):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        passage_id = item.get("id")
        return Passage(title=title or "", text=text, id=None if passage_id is None else str(passage_id),
                       score=item.get("score"), is_gold=item.get("is_gold"))
    if isinstance(getattr(item, "text", None), str):
        return Passage(title=getattr(item, "title", "") or "", text=item.text, is_gold=getattr(item, "is_gold", None))
    raise InputError(f"{where}: a passage is a {{\"title\", \"text\"}} object or a string, got {type(item).__name__}")
