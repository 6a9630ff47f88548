"""Single-hop questions from the facts that multi-hop rows name (MuSiQue hops, 2Wiki evidence triples).

A fact is ``(subject, relation)`` with an answer; :func:`fact_question` words it as a question, with a
phrasing of its own for the relations these datasets use most and ``What is the {relation} of
{subject}?`` for the rest.
"""

from __future__ import annotations

from ..passage import Passage
from ..normalize import contains_answer

_PHRASES = {
    "author": "Who wrote {s}?",
    "director": "Who directed {s}?",
    "producer": "Who produced {s}?",
    "performer": "Who performed {s}?",
    "composer": "Who composed {s}?",
    "screenwriter": "Who wrote the screenplay of {s}?",
    "creator": "Who created {s}?",
    "founded by": "Who founded {s}?",
    "publisher": "Who published {s}?",
    "spouse": "Who was the spouse of {s}?",
    "father": "Who was the father of {s}?",
    "mother": "Who was the mother of {s}?",
    "child": "Who was a child of {s}?",
    "sibling": "Who was a sibling of {s}?",
    "date of birth": "When was {s} born?",
    "place of birth": "Where was {s} born?",
    "date of death": "When did {s} die?",
    "place of death": "Where did {s} die?",
    "place of burial": "Where was {s} buried?",
    "cause of death": "What did {s} die of?",
    "country of citizenship": "What country was {s} a citizen of?",
    "country": "Which country is {s} in?",
    "country of origin": "What country does {s} come from?",
    "located in the administrative territorial entity": "Where is {s} located?",
    "location": "Where is {s}?",
    "headquarters location": "Where is {s} headquartered?",
    "capital": "What is the capital of {s}?",
    "inception": "When was {s} founded?",
    "publication date": "When was {s} released?",
    "educated at": "Where was {s} educated?",
    "employer": "Who employed {s}?",
    "occupation": "What was the occupation of {s}?",
    "member of sports team": "Which team did {s} play for?",
    "record label": "What record label released {s}?",
    "original broadcaster": "Which network first aired {s}?",
    "award received": "Which award did {s} receive?",
}


def fact_question(subject: str, relation: str) -> str:
    relation = " ".join(relation.replace("_", " ").split()).lower()
    phrase = _PHRASES.get(relation, "What is the " + relation + " of {s}?")
    return phrase.format(s=subject)


def passage_holds(passage: Passage, answer: str) -> bool:
    """Whether the answer occurs in the passage (title or text) as whole words, after normalisation."""
    return contains_answer(f"{passage.title} {passage.text}", [answer])
