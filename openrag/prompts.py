"""The prompt formats of the released Open-RAG evaluation (SPEC section 5), per task family.

The strings are the ones the released checkpoints were trained and evaluated with; a different wording
changes their answers, so keep them byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .reflection import PARAGRAPH_END, PARAGRAPH_START, RETRIEVAL

# The multi-hop evaluation's task instruction, put before the instruction template with no separator.
TASK_INSTRUCTION = (
    "You are a question answering agent. Given a context and a question, your task is to answer the question "
    "based on the context. Instead of a full sentence, your answer must be the shortest word or phrase or named "
    "entity. Some example outputs 'answer' are: yes; no; Ibn Sina; Doha, Qatar; 2,132 seats, Los Angeles, "
    "California etc."
)
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"

PUBHEALTH_INSTRUCTION = "Is the following statement correct or not? Say true if it's correct; otherwise say false."
ARC_INSTRUCTION = "Given four answer candidates, A, B, C and D, choose the best answer choice."

# released: the released evaluation's strings (above). training: multi-hop questions the way `openrag data build`
# writes them and `openrag train` learns them: the question alone in the template, evidence as "title\ntext"
# (the released models were trained that way too, but evaluated in the released format). Other tasks: released.
PROMPT_FORMATS = ("released", "training")

MULTIHOP_TASKS = ("multihop", "hotpotqa", "2wikimultihopqa", "musique")
SINGLEHOP_TASKS = ("singlehop", "popqa", "triviaqa")
CLOSED_TASKS = ("pubhealth", "fever", "arc_c")
TASKS = MULTIHOP_TASKS + SINGLEHOP_TASKS + CLOSED_TASKS


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def is_closed(task: str) -> bool:
    """Closed tasks (a fixed answer set) sum the scores of identical answers before choosing."""
    return check_task(task) in CLOSED_TASKS


def check_prompt_format(prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    return prompt_format


def question_prompt(task: str, question: str, choices=None, prompt_format: str = "released") -> str:
    """The prompt that precedes any reflection token."""
    check_task(task)
    if check_prompt_format(prompt_format) == "training" and task in MULTIHOP_TASKS:
        return INSTRUCTION_TEMPLATE.format(instruction=question)
    if task in MULTIHOP_TASKS:
        return TASK_INSTRUCTION + INSTRUCTION_TEMPLATE.format(instruction=question)
    if task in ("pubhealth", "fever"):
        instruction = PUBHEALTH_INSTRUCTION + "\n\n## Input:\n\n" + question
    elif task == "arc_c":
        if choices is None:
            raise ValueError("arc_c needs the answer choices (a list of texts or {'label': [...], 'text': [...]})")
        instruction = ARC_INSTRUCTION + "\n\n### Input:\n" + question + format_choices(choices)
    else:
        instruction = question
    return INSTRUCTION_TEMPLATE.format(instruction=instruction)


def evidence_content(task: str, title: str, text: str, prompt_format: str = "released") -> str:
    """What goes between ``<paragraph>`` and ``</paragraph>``: in the released format multi-hop evidence is
    the text alone (it may already be a ``Knowledge 1: ...`` chain); otherwise ``title\\ntext``."""
    if check_task(task) in MULTIHOP_TASKS:
        if check_prompt_format(prompt_format) == "released":
            return text
        return f"{title}\n{text}" if title else text
    return f"{title}\n{text}"


def evidence_suffix(content: str) -> str:
    return f"{RETRIEVAL}{PARAGRAPH_START}{content}{PARAGRAPH_END}"


def format_choices(choices) -> str:
    """ARC choices as ``\\nA: ...\\nB: ...\\nC: ...\\nD: ...`` (numeric labels 1-4 read as A-D; D always
    shown, empty when missing; E only when present)."""
    if isinstance(choices, Mapping):
        numeric = dict(zip("1234", "ABCD"))
        by_label = {numeric.get(str(l), str(l)): t for l, t in zip(choices["label"], choices["text"])}
    elif isinstance(choices, Sequence) and not isinstance(choices, str):
        by_label = dict(zip("ABCDE", choices))
    else:
        raise ValueError(f"choices must be a list of texts or {{'label': [...], 'text': [...]}}, got {type(choices).__name__}")
    by_label.setdefault("D", "")
    lines = [f"\n{label}: {by_label.get(label, '')}" for label in "ABCD"]
    if "E" in by_label:
        lines.append(f"\nE: {by_label['E']}")
    return "".join(lines)
