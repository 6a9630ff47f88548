"""Self-RAG / Open-RAG reflection tokens (docs/method.md section 2), how they are added to a model, and the one way
evidence is written among them (:func:`evidence_suffix`: what training instances hold and answering prompts end with)."""

from __future__ import annotations

import torch
from torch import nn

NO_RETRIEVAL = "[No Retrieval]"
RETRIEVAL = "[Retrieval]"
CONTINUE = "[Continue to Use Evidence]"
IRRELEVANT = "[Irrelevant]"
RELEVANT = "[Relevant]"
PARAGRAPH_START = "<paragraph>"
PARAGRAPH_END = "</paragraph>"
UTILITY = tuple(f"[Utility:{k}]" for k in range(1, 6))
FULLY_SUPPORTED = "[Fully supported]"
PARTIALLY_SUPPORTED = "[Partially supported]"
NO_SUPPORT = "[No support / Contradictory]"

# The order in which the released checkpoints added them; token ids follow it.
REFLECTION_TOKENS: tuple[str, ...] = (
    NO_RETRIEVAL,
    RETRIEVAL,
    CONTINUE,
    IRRELEVANT,
    RELEVANT,
    PARAGRAPH_START,
    PARAGRAPH_END,
    *UTILITY,
    FULLY_SUPPORTED,
    PARTIALLY_SUPPORTED,
    NO_SUPPORT,
)
RETRIEVAL_TOKENS = (RETRIEVAL, NO_RETRIEVAL)
RELEVANCE_TOKENS = (RELEVANT, IRRELEVANT)
GROUNDEDNESS_TOKENS = (FULLY_SUPPORTED, PARTIALLY_SUPPORTED, NO_SUPPORT)
UTILITY_TOKENS = UTILITY
PAD_TOKEN = "<pad>"


def evidence_suffix(content: str) -> str:
    """``[Retrieval]<paragraph>content</paragraph>``: a passage as the model learns it and is shown it."""
    return f"{RETRIEVAL}{PARAGRAPH_START}{content}{PARAGRAPH_END}"


def add_reflection_tokens(model: nn.Module | None, tokenizer) -> int:
    """Add the 15 reflection tokens (and a pad token if the tokenizer has none) as special tokens,
    resize the model's embeddings and set each new row to the mean of the existing rows.

    Tied input/output embeddings stay tied. Returns the number of tokens added (0 if already present).
    """
    missing = [t for t in REFLECTION_TOKENS if t not in tokenizer.get_vocab()]
    added = 0
    if missing:  # first, so that the reflection tokens get consecutive ids in the order of docs/method.md section 2
        added += tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if model is not None and added:
        _grow_embeddings(model, len(tokenizer))
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    return added


@torch.no_grad()
def _grow_embeddings(model: nn.Module, vocab_size: int) -> None:
    old_in = model.get_input_embeddings().weight  # [V0, D]
    n_old = old_in.shape[0]
    if vocab_size <= n_old:
        return
    in_mean = old_in.float().mean(0)  # [D]
    out = model.get_output_embeddings()
    out_mean = out.weight.float().mean(0) if out is not None else None
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    model.get_input_embeddings().weight[n_old:] = in_mean.to(old_in.dtype)
    new_out = model.get_output_embeddings()
    if new_out is not None and new_out.weight is not model.get_input_embeddings().weight:
        new_out.weight[n_old:] = out_mean.to(new_out.weight.dtype)
        if getattr(new_out, "bias", None) is not None:
            new_out.bias[n_old:] = 0


def reflection_token_ids(tokenizer) -> dict[str, int]:
    """Token id of every reflection token; a clear error if the tokenizer lacks them."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in REFLECTION_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer has no reflection tokens {missing}; load an Open-RAG model, "
            "or call openrag.add_reflection_tokens(model, tokenizer) before training"
        )
    return {t: vocab[t] for t in REFLECTION_TOKENS}
