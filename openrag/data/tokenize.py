"""Training instances: reading them, and tokenising one with its loss mask (docs/method.md section 4).

An instance is ``{"input": ..., "output": ...}``. The model sees ``PROMPT_TEMPLATE.format(input=...)``
followed by ``output`` and the tokenizer's EOS; the loss covers the output only, and never the text of a
retrieved passage:

* the prompt is masked;
* the inside of every ``<paragraph> ... </paragraph>`` span is masked, each span on its own, so the
  reflection tokens and answers *between* two passages are trained (the released code masked from the
  first ``<paragraph>`` to the last ``</paragraph>``, hiding them);
* the ``<paragraph>``/``</paragraph>`` tokens themselves are trained, as in the released code and in
  Self-RAG (``labels[start + 1 : end]`` there): the model learns that evidence opens after ``[Retrieval]``
  and where it ends. An unclosed ``<paragraph>`` masks the rest of the output (the EOS stays trained);
* reflection tokens, answers and the EOS are trained, with two exceptions: an instance marked
  ``train_decision: false`` does not train its leading ``[Retrieval]``/``[No Retrieval]`` (a question
  whose retrieval decision is taught by another instance), and an output that ends at a relevance token
  (a relevance-only instance) gets no EOS: the answer would follow there, not the end.

Too long an instance is shortened where it costs nothing to learn from: passage text first (the longest
passages lose their tails first), then the end of the instruction text; the answer and the reflection
tokens are kept. Only a target that alone exceeds ``max_length`` is cut at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..model.reflection import IRRELEVANT, NO_RETRIEVAL, PARAGRAPH_END, PARAGRAPH_START, RELEVANT, RETRIEVAL
from ..tasks import PROMPT_TEMPLATE, format_prompt
from .examples import ErrorLog, RowError
from .readers import is_hub_name, iter_json_rows, split_window, window

log = logging.getLogger(__name__)

_PROMPT_HEAD, _PROMPT_TAIL = PROMPT_TEMPLATE.split("{input}")
IGNORE_INDEX = -100


@dataclass
class TokenizedInstance:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX (-100) where no loss is taken
    truncated: bool  # True when passages, instruction or target were shortened to fit max_length


def _marker_ids(tokenizer) -> tuple[int, int]:
    # convert_tokens_to_ids, not get_vocab(): the latter rebuilds the whole vocabulary dict on every call
    ids = tokenizer.convert_tokens_to_ids([PARAGRAPH_START, PARAGRAPH_END])
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(
            "the tokenizer has no <paragraph> tokens; call openrag.add_reflection_tokens(model, tokenizer) "
            "before tokenising training instances"
        )
    return ids[0], ids[1]


def _tokenize_joint(tokenizer, prompt: str, output: str) -> tuple[list[int], int]:
    """Token ids of ``prompt + output`` (tokenised together, as generation continues the prompt) and
    the number of them that belong to the prompt."""
    text = prompt + output
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        n_prompt = sum(1 for i, (start, end) in enumerate(offsets) if start < len(prompt) and not (start == end == 0 and i > 0))
    else:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if len(ids) > n_prompt and ids[-1] == eos and not text.endswith(tokenizer.eos_token or "\0"):
        ids.pop()  # a tokenizer that appends EOS itself: the target adds it below, once
    return ids, n_prompt


def _paragraph_spans(ids: list[int], start_id: int, end_id: int, begin: int, stop: int) -> list[tuple[int, int]]:
    """``(first, last)`` index ranges (last exclusive) of each span's inside within ``ids[begin:stop]``."""
    spans, i = [], begin
    while i < stop:
        if ids[i] == start_id:
            j = i + 1
            while j < stop and ids[j] != end_id:
                j += 1
            spans.append((i + 1, j))
            i = j + 1
        else:
            i += 1
    return spans


def _water_fill(lengths: list[int], excess: int) -> list[int]:
    """How many tokens each span keeps so that ``excess`` tokens go, longest spans shortened first."""
    if excess <= 0:
        return list(lengths)
    if sum(lengths) <= excess:
        return [0] * len(lengths)

    def removed(cap: int) -> int:
        return sum(max(0, n - cap) for n in lengths)

    cap = max(lengths)
    while removed(cap) < excess:
        cap -= 1
    keep = [min(n, cap) for n in lengths]
    give_back = removed(cap) - excess  # fewer than the spans longer than cap: one token back to each
    for k, n in enumerate(lengths):
        if give_back and n > cap:
            keep[k] += 1
            give_back -= 1
    return keep


def tokenize_instance(tokenizer, input: str, output: str, max_length: int, train_decision: bool = True) -> TokenizedInstance:
    """Token ids and labels of one instance (see the module docstring for the masking rules)."""
    start_id, end_id = _marker_ids(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the target must end with one")
    ids, n_prompt = _tokenize_joint(tokenizer, format_prompt(input), output)
    relevance_only = output.rstrip().endswith((RELEVANT, IRRELEVANT))
    if not relevance_only:
        ids.append(tokenizer.eos_token_id)
    n_target_end = len(ids) - (0 if relevance_only else 1)  # index of EOS (or the end)
    trained = [False] * n_prompt + [True] * (len(ids) - n_prompt)
    if not train_decision and output.lstrip().startswith((RETRIEVAL, NO_RETRIEVAL)):
        # Some tokenizers put a whitespace piece before an added token: look a few positions in, and
        # untrain everything up to and including the decision token.
        decision_ids = tokenizer.convert_tokens_to_ids([RETRIEVAL, NO_RETRIEVAL])
        first = next((k for k in range(n_prompt, min(n_prompt + 3, len(ids))) if ids[k] in decision_ids), None)
        if first is None:
            raise ValueError("train_decision is false but the tokenised output does not start with [Retrieval] or [No Retrieval]; "
                             "add the reflection tokens to the tokenizer (openrag.add_reflection_tokens)")
        for k in range(n_prompt, first + 1):
            trained[k] = False
    spans = _paragraph_spans(ids, start_id, end_id, 0, n_target_end)
    for first, last in spans:
        for k in range(first, last):
            trained[k] = False

    truncated = False
    excess = len(ids) - max_length
    if excess > 0:
        truncated = True
        drop = [False] * len(ids)
        keep = _water_fill([last - first for first, last in spans], excess)
        for (first, last), n_keep in zip(spans, keep):
            for k in range(first + n_keep, last):
                drop[k] = True
        excess -= sum(drop)
        if excess > 0:  # passages are gone: shorten the instruction text, keeping the template around it
            head = len(tokenizer(_PROMPT_HEAD, add_special_tokens=True)["input_ids"])
            tail = len(tokenizer(_PROMPT_TAIL, add_special_tokens=False)["input_ids"])
            removable = [k for k in range(head, max(head, n_prompt - tail)) if not drop[k]]
            for k in removable[len(removable) - min(excess, len(removable)) :]:
                drop[k] = True
                excess -= 1
        ids = [t for t, d in zip(ids, drop) if not d]
        trained = [t for t, d in zip(trained, drop) if not d]
        if excess > 0:
            log.debug("a target longer than max_length=%d was cut at the end", max_length)
            ids, trained = ids[:max_length], trained[:max_length]
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained)]
    return TokenizedInstance(input_ids=ids, labels=labels, truncated=truncated)


# ------------------------------------------------------------------------------------------ reading


def _instance_of(row: dict) -> dict | None:
    """``{input, output}`` of a released or openrag row; None for rows the instruction mode skips."""
    if "conversation" in row:
        if str(row.get("corpus") or "").strip():
            return None  # pretraining text: the released code trains it as plain LM text; not an instance
        turns = row["conversation"]
        if not isinstance(turns, list) or not turns:
            raise KeyError("conversation")
        if len(turns) != 1:
            return None  # the released loader keeps single-turn conversations only
        turn = turns[0]
        if not isinstance(turn, dict) or "input" not in turn or "output" not in turn:
            raise KeyError("conversation[0].input/output")
        out = {"input": str(turn["input"]), "output": str(turn["output"])}
        if row.get("train_decision") is False:
            out["train_decision"] = False
        return out
    if "output" in row and ("input" in row or "instruction" in row):
        # Self-RAG's own files: instruction (+ optional input) -> output
        parts = [str(row.get("instruction") or "").strip(), str(row.get("input") or "").strip()]
        return {"input": "\n\n".join(p for p in parts if p), "output": str(row["output"])}
    raise KeyError("conversation")


def load_training_instances(
    path_or_name: str | Path, subset: str | None = None, *, strict: bool = False, errors: ErrorLog | None = None
) -> list[dict]:
    """``[{"input", "output"}]`` from this project's JSON lines, a local file in the released
    ``shayekh/openrag_train_data`` schema (``conversation: [{input, output}]``, ``corpus``,
    ``instruction``), or that dataset by hub name (``subset``: ``moe`` or ``dense``) through ``datasets``.

    As in the released loader, rows with a non-empty ``corpus`` and multi-turn conversations are not
    instruction instances and are left out (counted in the log).
    """
    errors = errors if errors is not None else ErrorLog(strict=strict)
    errors.strict = errors.strict or strict
    name, skip, limit = split_window(path_or_name)
    if Path(name).expanduser().exists():
        source, rows = name, iter_json_rows(Path(name).expanduser())
    elif is_hub_name(name):
        source, rows = name, _hub_training_rows(name, subset)
    else:
        raise FileNotFoundError(f"no training data at {name}, and it is not a hub dataset name (owner/name)")
    out, left_out = [], 0
    for line, row in window(rows, skip, limit, errors):
        try:
            if not isinstance(row, dict):
                raise KeyError("row")
            instance = _instance_of(row)
        except KeyError as err:
            errors.report(RowError(source, line, err.args[0], "missing or malformed (expected conversation: [{input, output}])"))
            continue
        if instance is None:
            left_out += 1
            continue
        if not instance["output"].strip():
            errors.report(RowError(source, line, "output", "empty"))
            continue
        out.append(instance)
    if left_out:
        log.info("%s: left out %d pretraining-corpus or multi-turn rows", source, left_out)
    return out


def _hub_training_rows(name: str, subset: str | None):
    try:
        import datasets

        loaded = datasets.load_dataset(name, subset, split="train")
    except Exception as err:
        raise FileNotFoundError(
            f"cannot load {name!r} (subset {subset!r}) through datasets ({type(err).__name__}: {err}); "
            "offline, pass a local file of the same schema"
        ) from err
    return ((i + 1, row) for i, row in enumerate(loaded))
