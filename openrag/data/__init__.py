"""Data: readers for the QA formats, Open-RAG training instances, tokenisation for training."""

from .examples import ErrorLog, QAExample, RowError, normalize_question
from .readers import read_examples
from .tokenize import IGNORE_INDEX, PROMPT_TEMPLATE, TokenizedInstance, format_prompt, load_training_instances, tokenize_instance

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_TEMPLATE",
    "ErrorLog",
    "QAExample",
    "RowError",
    "TokenizedInstance",
    "format_prompt",
    "load_training_instances",
    "normalize_question",
    "read_examples",
    "tokenize_instance",
]
