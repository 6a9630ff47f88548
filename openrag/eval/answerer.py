"""The model side of ``openrag eval``: an :class:`openrag.answer.OpenRAG` wrapped as the loop's answerer.

``both=False`` (``openrag eval``): each question is answered once with the requested options.
A question whose passages are None is given the ``--index`` folder's (``OpenRAG(retriever=index)``).
``both=True`` (``openrag eval sweep``): each question gets the answer after a forced ``[No Retrieval]``
with its rule values (``p_retrieve``, ``minp``, ``meanp``) *and* the answer from its passages, in one
call: a confidence rule with a threshold above every probability generates the no-retrieval answer
first and then always retrieves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Sequence

from ..answer.scoring import RULES, get_rule
from ..precision import dtype_name
from .runner import Question


def answer_options(req, both: bool) -> dict:
    """Answering options for a request: eval's defaults (answer.options.COMMANDS), the flags given, the passage
    count, and the task's prompt format."""
    from ..answer.options import COMMANDS, AnswerOptions

    known = {f.name for f in fields(AnswerOptions)}
    options = {**COMMANDS["eval"].defaults, **{k: v for k, v in req.options.items() if k in known}}
    options.update(ndocs=req.ndocs, task=req.task, closed=req.task_info.closed, batch_size=max(32, req.batch_size * req.ndocs))
    if both:
        options.update(mode="adaptive_retrieval", retrieval_rule="minp", threshold=math.inf)
    return options


def to_result(answer, both: bool) -> dict:
    """The JSON-line fields of one pipeline answer (see openrag.answer.Answer)."""
    data = answer.to_dict()
    data.pop("question", None)
    if data.get("query") is None:  # the index was not searched: nothing to record
        data.pop("query", None)
        data.pop("retrieved_passages", None)
    result = {"prediction": data.pop("text"), "retrieved": data.pop("retrieved"), **data}
    if both:
        signals = getattr(answer, "signals", None) or {}
        rule = getattr(answer, "retrieval_rule", None)
        decided = {get_rule(rule).signal: answer.retrieval_value} if rule else {}
        result["no_retrieval"] = {"prediction": answer.no_retrieval_text or "",
                                  **{r.signal: signals.get(r.signal, decided.get(r.signal)) for r in RULES.values()}}
        for key in ("retrieval_rule", "retrieval_value", "threshold"):  # the sweep's device, not a decision
            result.pop(key, None)
    return result


def rag_answerer(rag, both: bool):
    """The loop's answerer over a loaded OpenRAG (its options already set by :func:`answer_options`)."""

    def answer(batch: Sequence[Question]) -> list[dict]:
        questions = [q.example.question for q in batch]
        passages = [q.passages for q in batch]
        choices = [q.example.choices for q in batch] if any(q.example.choices for q in batch) else None
        return [to_result(a, both) for a in rag.answer_batch(questions, passages, choices)]

    return answer


def pipeline_answerer_factory(req, both: bool):
    """Load the model once; return (answerer, settings to record in the summary)."""
    from ..answer.pipeline import OpenRAG
    from ..model.compiled import is_compiled

    options = answer_options(req, both)
    retriever = None
    if req.index is not None:
        from ..retrieval import open_index

        retriever = open_index(req.index, device=req.device)
    rag = OpenRAG.from_pretrained(req.model_name, device=req.device, dtype=req.dtype, retriever=retriever, backend=req.backend, **options)
    settings = {k: v for k, v in asdict(rag.options).items() if not (isinstance(v, float) and math.isinf(v))}
    settings["prompt_format"] = rag.options.prompt_format or rag.model_prompt_format
    if settings.get("threshold", 0.0) is None:
        settings["threshold"] = rag.options.gamma  # the pipeline's default, written out
    if both:  # the rule settings above are the sweep's device; its summary is the always-retrieve one
        settings.pop("retrieval_rule", None)
        settings["mode"] = "sweep"
    if rag.notes:
        settings["model_notes"] = list(rag.notes)
    if rag.model is not None:
        settings["dtype"] = dtype_name(rag.model.dtype)  # chosen or defaulted (bf16 where it is fast)
        if is_compiled(rag.model):  # recorded, not compared on resume: the same answers in float32
            settings["compiled"] = True
    return rag_answerer(rag, both), settings
