"""Answering: the engine (engine.py, with its own KV cache in kvcache.py) knows token ids and probabilities;
prompts.py builds prompts from the task registry; options.py declares every answering option once;
scoring.py holds the retrieval rules (one ``decide``) and the candidate score; pipeline.py is ``OpenRAG``.

A second generation backend goes beside engine.py: the pipeline needs of it only ``prefill(prompts)`` and
``generate(prefixes, rows, max_new_tokens)`` (see :class:`engine.Engine`); backends.py is their registry
(``torch``; ``vllm``: vllm_engine.py). Imports openrag.model, openrag.tasks and, for the vllm backend only,
openrag.vllm; never openrag.eval, serve or commands.
"""

from .options import DEFAULT_THRESHOLD, MODES, QUERIES, AnswerOptions
from .pipeline import Answer, Candidate, OpenRAG
from .scoring import RULES, decide

__all__ = ["Answer", "AnswerOptions", "Candidate", "DEFAULT_THRESHOLD", "MODES", "OpenRAG", "QUERIES", "RULES", "decide"]
