"""Baselines for ``openrag eval --baseline``: any causal LM answering in a plain prompt, no reflection tokens.

``standard_rag``: the question's ``--ndocs`` passages (the same ones Open-RAG is given) go into one prompt
before the question, the usual retrieve-then-read setup. ``closed_book``: the question alone. The prompt
carries the task's instruction (for multi-hop tasks the one Open-RAG is evaluated with) and goes through the
model's chat template when it has one (an instruction-tuned base such as SmolLM2-Instruct), else the Alpaca
template of :mod:`openrag.tasks`. ``--instruction TEXT`` replaces the task's instruction (small models
may copy the multi-hop instruction's example answers). Decoding is greedy; the answer is the first non-empty line, without a
leading ``Answer:``.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from ..precision import dtype_name
from ..tasks import format_choices, format_prompt, get_task
from .runner import Question

MAX_PASSAGE_CHARS = 2000  # a passage longer than this is cut (about 500 tokens), so three fit any context
_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?answer\s*(?:is)?\s*[:\-]\s*", re.IGNORECASE)


def task_request(task: str, question: str, choices=None, instruction: str | None = None) -> str:
    """The instruction (the task's, unless one is given) and the question, as one user message."""
    if instruction is not None:
        return f"{instruction}\n\nQuestion: {question}" + (format_choices(choices) if choices is not None else "")
    t = get_task(task)
    return f"{t.plain_instruction}\n\n{t.subject}: {t.input_text(question, choices)}"


def context_block(passages: Sequence) -> str:
    """``Context:`` then one numbered paragraph per passage (``title: text``)."""
    lines = []
    for i, p in enumerate(passages, 1):
        text = p.text if len(p.text) <= MAX_PASSAGE_CHARS else p.text[:MAX_PASSAGE_CHARS] + " ..."
        lines.append(f"[{i}] {p.title}: {text}" if p.title else f"[{i}] {text}")
    return "Context:\n" + "\n\n".join(lines)


def plain_prompt(tokenizer, task: str, question: str, passages: Sequence | None, choices=None, instruction: str | None = None) -> str:
    message = task_request(task, question, choices, instruction)
    if passages:
        message = f"{context_block(passages)}\n\n{message}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    return format_prompt(message)


def first_answer_line(generated: str) -> str:
    line = next((l for l in generated.splitlines() if l.strip()), "")
    return _ANSWER_PREFIX.sub("", line).strip()


class PlainAnswerer:
    """Greedy answers from a plain prompt, a batch of questions per ``generate`` call (left-padded)."""

    def __init__(self, model, tokenizer, task: str, with_passages: bool, max_new_tokens: int, instruction: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.task, self.with_passages, self.max_new_tokens = task, with_passages, max_new_tokens
        self.instruction = instruction
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @torch.inference_mode()
    def __call__(self, batch: Sequence[Question]) -> list[dict]:
        texts = [plain_prompt(self.tokenizer, self.task, q.example.question, q.passages if self.with_passages else None,
                              q.example.choices, self.instruction) for q in batch]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        window = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        for q, n in zip(batch, enc["attention_mask"].sum(dim=1).tolist()):
            if window is not None and n + self.max_new_tokens > window:
                raise ValueError(f"question {q.example.id!r}: its plain prompt takes {n} tokens, over the context window of {window} "
                                 f"with max_new_tokens={self.max_new_tokens}; lower --ndocs or --max_new_tokens")
        out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = out[:, enc["input_ids"].shape[1]:]  # (batch, generated)
        results = []
        for q, ids, mask in zip(batch, new, enc["attention_mask"]):
            raw = self.tokenizer.decode(ids, skip_special_tokens=True)
            result = {"prediction": first_answer_line(raw), "retrieved": bool(self.with_passages and q.passages), "raw": raw,
                      "prompt_tokens": int(mask.sum())}
            if self.with_passages:
                result["passages"] = [{"title": p.title, "text": p.text} for p in q.passages or ()]
            results.append(result)
        return results


def baseline_answerer_factory(req, both: bool):
    """Load the model as a plain LM; return (answerer, settings to record in the summary)."""
    from ..answer.options import default_of
    from ..model.loading import load_model

    model, tokenizer = load_model(req.model_name, dtype=req.dtype, device=req.device)
    model.eval()
    max_new_tokens = req.options.get("max_new_tokens", default_of("max_new_tokens"))
    answerer = PlainAnswerer(model, tokenizer, req.task, req.baseline == "standard_rag", max_new_tokens, req.instruction)
    settings = {"max_new_tokens": max_new_tokens, "chat_template": bool(getattr(tokenizer, "chat_template", None)),
                "instruction": req.instruction or "the task's", "dtype": dtype_name(model.dtype)}
    return answerer, settings
