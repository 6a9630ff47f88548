"""Answer text normalised, in one place, for its two uses, and why they differ.

Both lower-case, remove punctuation, drop the articles a/an/the and collapse white space. They differ in how
punctuation goes, because they answer different questions:

- :func:`normalize_answer` *scores* an answer (EM, F1, match_norm): the official HotpotQA/SQuAD rule exactly,
  ASCII punctuation deleted. Scores are comparable with published ones only under that rule, so it is kept
  as it is, quirks included ("Saint-Denis" -> "saintdenis").
- :func:`normalize_text` *finds* an answer inside a passage (:func:`contains_answer`; training labels: which
  passages contain the answer, which facts their paragraph holds) and keys questions (``--exclude``). Matching
  there is by whole words, so punctuation becomes a space (deleting it glues words: "Saint-Denis" would hide
  "Denis"), typographic quotes and dashes count as punctuation, and NFKC folds look-alike characters (data files
  mix them freely).

An answer the labels find in a passage and a prediction scored against it may therefore normalise to
different strings; each rule is right for its use, and this module is the one place either is changed.
This module imports nothing of openrag.
"""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation + "‘’“”–—"})


def _normalize(text: str, punctuation: dict) -> str:
    text = _ARTICLES.sub(" ", text.lower().translate(punctuation))
    return " ".join(text.split())


def normalize_answer(text: str) -> str:
    """For scoring: the official HotpotQA/SQuAD normalisation (ASCII punctuation deleted)."""
    return _normalize(text, _DELETE_PUNCTUATION)


def normalize_text(text: str) -> str:
    """For finding an answer in a passage by whole words: NFKC, punctuation (typographic too) to spaces."""
    return _normalize(unicodedata.normalize("NFKC", text), _PUNCTUATION_TO_SPACE)


def contains_answer(text: str, answers) -> bool:
    """Whether any of ``answers`` occurs in ``text`` as whole words, both normalised by :func:`normalize_text`."""
    haystack = f" {normalize_text(text)} "
    for answer in answers:
        needle = normalize_text(answer)
        if needle and f" {needle} " in haystack:
            return True
    return False
