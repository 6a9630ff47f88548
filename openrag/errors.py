"""The error of input that cannot be answered as given, shared by every layer that checks input.

This module imports nothing of openrag, so any module may use it (``openrag.tasks`` checks a question's
answer choices with it, ``openrag.answer.pipeline`` raises it for malformed passages and oversize prompts, and the
server answers it 422).
"""

from __future__ import annotations


class InputError(ValueError):
    """A question or its passages cannot be answered as given (a malformed passage, answer choices the task
    does not take, a prompt longer than the context window): the caller's input, not a fault of the model or
    the code."""
