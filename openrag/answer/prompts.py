"""The prompts the model answers from (docs/method.md section 5), built from the task registry (openrag.tasks).

released: the released evaluation's strings. training: multi-hop questions the way ``openrag data build``
writes them and ``openrag train`` learns them: the question alone in the template, evidence as
``title\\ntext`` (the released models were trained that way too, but evaluated in the released format).
Other families are prompted the same way in both formats.
"""

from __future__ import annotations

from ..model.reflection import evidence_suffix
from ..passage import titled_text
from ..registry import check_choice
from ..tasks import TASKS, format_prompt, get_task

PROMPT_FORMATS = ("released", "training")


def check_prompt_format(prompt_format: str) -> str:
    return check_choice(PROMPT_FORMATS, prompt_format, "prompt format")


def question_prompt(task: str, question: str, choices=None, prompt_format: str = "released") -> str:
    """The prompt that precedes any reflection token. ``choices``: the question's answer choices, for a task
    that takes them (checked: :meth:`openrag.tasks.Task.check_choices`)."""
    t = get_task(task)
    check_prompt_format(prompt_format)
    if t.family == "multihop":  # the instruction goes before the template, and only in the released format
        return ("" if prompt_format == "training" else t.instruction) + format_prompt(t.body(question, choices, instruction=False))
    return format_prompt(t.body(question, choices))


def evidence_content(task: str, title: str, text: str, prompt_format: str = "released") -> str:
    """What goes between ``<paragraph>`` and ``</paragraph>``: in the released format multi-hop evidence is
    the text alone (it may already be a ``Knowledge 1: ...`` chain); otherwise ``title\\ntext`` (the released
    single-hop prompts keep the newline of an empty title)."""
    if get_task(task).family == "multihop":
        if check_prompt_format(prompt_format) == "released":
            return text
        return titled_text(title, text)
    return titled_text(title, text, keep_empty_title=True)


__all__ = ["PROMPT_FORMATS", "TASKS", "check_prompt_format", "evidence_content", "evidence_suffix", "question_prompt"]
