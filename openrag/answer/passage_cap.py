"""A bound on the work of one evidence row: its passage cut to the first ``max_passage_tokens`` tokens.

The context window bounds a row too, but at 8k tokens one row costs a minute of a small model's time on a CPU;
a server answers many clients, so it cuts passages far below that (``openrag serve``'s default: 1,024 tokens).
"""

from __future__ import annotations

from dataclasses import replace


def passage_label(k: int, passage) -> str:
    """How a note names a question's passage ``k`` (from 0): ``passage 1 (Its Title)`` for the first."""
    return f"passage {k + 1}" + (f" ({passage.title})" if passage.title else "")


def cap_passage(tokenizer, k: int, passage, max_tokens: int | None):
    """``(passage, note)``: passage ``k`` (a Passage) with its text cut to its first ``max_tokens`` tokens (the chain
    of n passages: n times that), and a note saying so; ``(passage, None)`` when it fits or ``max_tokens`` is None."""
    if max_tokens is None:
        return passage, None
    limit = max_tokens * max(1, passage.chained)
    if len(passage.text.encode("utf-8")) + 1 <= limit:  # a token covers a byte at least (+1: a word-start piece)
        return passage, None
    ids = tokenizer(passage.text, add_special_tokens=False).input_ids
    if len(ids) <= limit:
        return passage, None
    where = f"the chain of {passage.chained} passages" if passage.chained else passage_label(k, passage)
    return (replace(passage, text=tokenizer.decode(ids[:limit])),
            f"{where} cut from {len(ids)} to {limit} tokens (max_passage_tokens)")
