"""The task registry: every task openrag answers, prompts, evaluates and builds data for, declared once.

One row per task says its prompt family (docs/method.md section 5), its metric (section 7 there; None for a
family name that is not an evaluation task), whether it has a closed answer set, the released evaluation's
instruction, and how its input is written. Prompts (``openrag.answer.prompts``), the evaluation, the plain-prompt
baselines, the training-data prompt and the CLI's ``choices=`` all read this table: a new task is one row.

The strings are the ones the released checkpoints were trained and evaluated with; a different wording
changes their answers, so keep them byte for byte. This module imports nothing of openrag but
:mod:`openrag.registry` and :mod:`openrag.errors`.

A question's answer choices are checked here once (:meth:`Task.check_choices`): ``openrag ask``, the server and
``OpenRAG.answer_batch`` call it before any work, and building the task's input calls it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import InputError
from .registry import check_choice, lookup

# The one instruction template (Alpaca's), for training instances, answering and the baselines alike.
PROMPT_TEMPLATE = "### Instruction:\n{input}\n\n### Response:\n"

# The multi-hop evaluation's task instruction, put before the template with no separator.
MULTIHOP_INSTRUCTION = (
    "You are a question answering agent. Given a context and a question, your task is to answer the question "
    "based on the context. Instead of a full sentence, your answer must be the shortest word or phrase or named "
    "entity. Some example outputs 'answer' are: yes; no; Ibn Sina; Doha, Qatar; 2,132 seats, Los Angeles, "
    "California etc."
)
PUBHEALTH_INSTRUCTION = "Is the following statement correct or not? Say true if it's correct; otherwise say false."
ARC_INSTRUCTION = "Given four answer candidates, A, B, C and D, choose the best answer choice."
# What the plain-prompt baselines ask of a task whose released prompt has no instruction.
SHORT_ANSWER_INSTRUCTION = "Answer the question with the shortest word, phrase or named entity, not a full sentence."

CHOICE_LABELS = "ABCDE"  # the letters answer choices are shown with, in order
MAX_CHOICES = len(CHOICE_LABELS)
CHOICES_FORM = f"a list of 1 to {MAX_CHOICES} texts (A-E), or {{'label': [...], 'text': [...]}}"

BENCH = "shayekh/openrag_bench"


@dataclass(frozen=True)
class Task:
    name: str
    family: str  # multihop: instruction before the template; singlehop and closed: inside it
    metric: str | None  # hotpotem | match | accuracy (eval.metrics); None: a prompt family, not an eval task
    closed: bool  # answers from a fixed label set: candidates' scores are summed per identical answer
    instruction: str | None = None  # the released evaluation's instruction; None: the question alone
    input_header: str = ""  # between the instruction and the question, inside the template
    subject: str = "Question"  # what the baselines' plain prompt calls the input
    needs_choices: bool = False  # lettered answer choices follow the question
    hub_config: str | None = None  # config of shayekh/openrag_bench that holds it, if any

    @property
    def default_dataset(self) -> str | None:
        return BENCH if self.hub_config else None

    @property
    def evaluated(self) -> bool:
        return self.metric is not None

    @property
    def plain_instruction(self) -> str:
        """The instruction of the plain-prompt baselines (the released one, else a short-answer request)."""
        return self.instruction or SHORT_ANSWER_INSTRUCTION

    def check_choices(self, choices) -> None:
        """The one check of a question's answer ``choices`` (None: none given): a task with choices needs 1 to 5
        of them, any other task takes none. Else InputError, naming ``choices`` and the fix."""
        if not self.needs_choices:
            if choices is not None:
                raise InputError(f"task {self.name} takes no answer choices; drop choices, or ask with a multiple-choice "
                                 f"task ({', '.join(CHOICE_TASKS)})")
            return
        if choices is None:
            raise InputError(f"task {self.name} needs the answer choices; give choices: {CHOICES_FORM}")
        choices_by_label(choices)

    def input_text(self, question: str, choices=None) -> str:
        """The question, with its lettered choices when the task has them (checked: :meth:`check_choices`)."""
        self.check_choices(choices)
        return question + format_choices(choices) if self.needs_choices else question

    def body(self, question: str, choices=None, instruction: bool = True) -> str:
        """What goes into the template: the instruction (if ``instruction`` and the task has one), its input
        header, the question and any choices (the prompt of a singlehop or closed task, and of the training
        instances of multiple-choice questions)."""
        text = self.input_text(question, choices)
        return f"{self.instruction}{self.input_header}{text}" if instruction and self.instruction else text


_MULTIHOP = dict(family="multihop", metric="hotpotem", closed=False, instruction=MULTIHOP_INSTRUCTION)
_PUBHEALTH = dict(family="closed", closed=True, instruction=PUBHEALTH_INSTRUCTION, input_header="\n\n## Input:\n\n", subject="Statement")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("multihop", **{**_MULTIHOP, "metric": None}),
        Task("hotpotqa", **_MULTIHOP, hub_config="hotpotqa"),
        Task("2wikimultihopqa", **_MULTIHOP, hub_config="2wikimultihopqa"),
        Task("musique", **_MULTIHOP, hub_config="musique"),
        Task("singlehop", "singlehop", None, False),
        Task("popqa", "singlehop", "match", False),
        Task("triviaqa", "singlehop", "match", False),
        Task("pubhealth", metric="accuracy", **_PUBHEALTH),
        Task("fever", metric=None, **_PUBHEALTH),
        Task("arc_c", "closed", "accuracy", True, ARC_INSTRUCTION, "\n\n### Input:\n", needs_choices=True),
    )
}
EVAL_TASKS = tuple(name for name, t in TASKS.items() if t.evaluated)
CHOICE_TASKS = tuple(name for name, t in TASKS.items() if t.needs_choices)


def get_task(name: str) -> Task:
    return lookup(TASKS, name, "task")


def get_eval_task(name: str) -> Task:
    return TASKS[check_choice(EVAL_TASKS, name, "task")]


def format_prompt(text: str) -> str:
    """``text`` in the instruction template."""
    return PROMPT_TEMPLATE.format(input=text)


def evidence_chain(parts: Sequence[str]) -> str:
    """Multi-hop evidence in one paragraph (docs/method.md section 3), each part ``title\\ntext``:
    ``Knowledge 1: {part} \\n[SEP] \\nKnowledge 2: {part}``."""
    return " \n[SEP] \n".join(f"Knowledge {i}: {part}" for i, part in enumerate(parts, start=1))


def choices_by_label(choices) -> dict:
    """The choices by letter: a list's in order A, B, ...; a ``{'label', 'text'}`` mapping's by its labels
    (numeric 1-4 read as A-D). InputError, naming ``choices`` and the fix, for none, more than five, labels
    that are not A-E, or any other shape."""
    if isinstance(choices, Mapping):
        labels, texts = choices.get("label"), choices.get("text")
        if not all(isinstance(x, Sequence) and not isinstance(x, str) for x in (labels, texts)):
            raise InputError(f"choices: a mapping needs a 'label' list and a 'text' list, got the fields {sorted(choices)}")
        if len(labels) != len(texts):
            raise InputError(f"choices: {len(labels)} labels for {len(texts)} texts; give one label per text")
        numeric = dict(zip("1234", "ABCD"))
        letters = [numeric.get(str(l).strip(), str(l).strip()) for l in labels]
    elif isinstance(choices, Sequence) and not isinstance(choices, str):
        texts = list(choices)
        labels = letters = list(CHOICE_LABELS[: len(texts)])
    else:
        raise InputError(f"choices must be {CHOICES_FORM}, got {type(choices).__name__}")
    if not texts:
        raise InputError(f"choices is empty; give {CHOICES_FORM}")
    if len(texts) > MAX_CHOICES:
        raise InputError(f"choices: at most {MAX_CHOICES} answer choices (A-E), got {len(texts)}; drop the extra ones")
    if any(letter not in CHOICE_LABELS for letter in letters) or len(set(letters)) != len(letters):
        raise InputError(f"choices: the labels must be distinct letters A-E (or 1-4), got {[str(l) for l in labels]}")
    return dict(zip(letters, texts))


def format_choices(choices) -> str:
    """Choices as ``\\nA: ...\\nB: ...\\nC: ...\\nD: ...`` (numeric labels 1-4 read as A-D; D always
    shown, empty when missing; E only when present). Checked by :func:`choices_by_label`."""
    by_label = choices_by_label(choices)
    by_label.setdefault("D", "")
    lines = [f"\n{label}: {by_label.get(label, '')}" for label in "ABCD"]
    if "E" in by_label:
        lines.append(f"\nE: {by_label['E']}")
    return "".join(lines)
