"""How to answer: :class:`AnswerOptions` is the one declaration of every answering option.

``openrag ask``, ``openrag eval`` and ``openrag serve`` build their flags from it, and the HTTP API its
request fields (openrag.serve.schemas): a new option is one field here. What differs per command is stated
once, in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from ..flags import add_field_flags, field_default
from ..registry import check_choice
from ..tasks import TASKS, get_task
from .prompts import PROMPT_FORMATS, check_prompt_format
from .scoring import RULES

MODES = ("no_retrieval", "always_retrieve", "adaptive_retrieval")
QUERIES = ("question", "question+answer")  # what a retriever is asked
# Used when no threshold is given: "retrieve when [Retrieval] is likelier than [No Retrieval]", and the
# same neutral point for the confidence rules. Tune per task (the published multi-hop run used 0.0).
DEFAULT_THRESHOLD = 0.5
SERVE_MAX_PASSAGE_TOKENS = 1024  # serve's cut of each passage (README, "Security")


def _rules_help() -> str:
    return "adaptive rule; " + "; ".join(f"{r.name}: retrieve when {r.help} {r.side} threshold" for r in RULES.values())


@dataclass
class AnswerOptions:
    """How to answer; every field is also a flag of ``openrag ask``/``eval``/``serve`` and a request field."""

    mode: str = field(default="adaptive_retrieval", metadata={"choices": MODES, "help": "when to retrieve"})
    retrieval_rule: str = field(default="token", metadata={"choices": tuple(RULES), "help": _rules_help()})
    threshold: float | None = field(default=None, metadata={"help": f"the adaptive rule's threshold (default {DEFAULT_THRESHOLD})"})
    ndocs: int = field(default=3, metadata={"help": "use the first NDOCS passages, one candidate each"})
    chain: bool = field(default=False, metadata={"help": "multi-hop: one more candidate whose evidence is those "
                        "passages in one chain ('Knowledge 1: ... [SEP] Knowledge 2: ...'), so that an answer may join them"})
    max_new_tokens: int = field(default=100, metadata={"help": "the most tokens generated per candidate"})
    max_passage_tokens: int | None = field(default=None, metadata={"help": "cut each passage to its first N tokens, "
                                           "with a note (the chain: N per passage it joins): a bound on one row's work "
                                           f"(default: only the context window bounds it; serve: {SERVE_MAX_PASSAGE_TOKENS})"})
    # The candidate score (docs/method.md section 6). By default the answer's own confidence, identical answers pooled:
    # tuned on training questions, it answered 1-6 more of 100 held-out questions than the paper's critique-weighted
    # score on every dev set and model measured (MODEL.md, "Where the answers fail"). The paper's score:
    # --w_rel 1 --use_groundness --use_utility, and closed=None (by task; --no-closed on open tasks) (openrag eval
    # keeps it: COMMANDS["eval"], and `closed` from its task).
    use_seqscore: bool = field(default=True, metadata={"help": "add exp(mean token log-prob) to the score"})
    use_groundness: bool = field(default=False, metadata={"help": "add w_sup * the groundedness (support) score (spelled as in the seed)"})
    use_utility: bool = field(default=False, metadata={"help": "add w_use * the utility score"})
    w_rel: float = field(default=0.0, metadata={"help": "weight of the relevance score"})
    w_sup: float = field(default=1.0, metadata={"help": "weight of the groundedness (support) score"})
    w_use: float = field(default=1.0, metadata={"help": "weight of the utility score"})
    task: str = field(default="multihop", metadata={"choices": tuple(TASKS), "help": "prompt format and answer aggregation"})
    prompt_format: str | None = field(default=None, metadata={"choices": PROMPT_FORMATS, "help": "released: the "
                                      "released evaluation's prompts (multi-hop: task instruction, untitled evidence); "
                                      "training: multi-hop prompts as `openrag data build` writes them (question alone, "
                                      "'title\\ntext' evidence); default: the one the model was trained with (its "
                                      "checkpoint says; released for checkpoints that do not)"})
    # In Python None follows the task (pooled for closed tasks only, as the paper does).
    closed: bool | None = field(default=True, metadata={"help": "sum the scores of identical answers before choosing "
                                "(default on; the paper pools for closed tasks only: off on open tasks for its choice)"})
    batch_size: int = field(default=32, metadata={"help": "the most rows (candidates) generated together"})
    query: str = field(default="question", metadata={"choices": QUERIES, "help": "what the retriever (--index) is "
                       "asked: the question, or the question plus the model's no-retrieval answer (multi-hop)"})

    def __post_init__(self):
        for name in ("mode", "retrieval_rule", "query"):
            check_choice(_FIELDS[name].metadata["choices"], getattr(self, name), name)
        get_task(self.task)
        if self.prompt_format is not None:
            check_prompt_format(self.prompt_format)
        for name in ("ndocs", "max_new_tokens", "batch_size", "max_passage_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def gamma(self) -> float:
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    @property
    def is_closed(self) -> bool:
        return get_task(self.task).closed if self.closed is None else self.closed

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, command: str = "ask") -> None:
        add_option_arguments(parser, command)

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str = "ask") -> AnswerOptions:
        return cls(**{**COMMANDS[command].defaults, **given_options(args, command)})


_FIELDS = {f.name: f for f in fields(AnswerOptions)}


@dataclass(frozen=True)
class CommandOptions:
    """How one command takes the options: which fields it sets itself (no flag), and the defaults in which
    it differs from AnswerOptions'. ``given_only``: its flags default to None, so that only the options
    given are passed on (and recorded); the defaults then apply where the options are used."""

    excluded: tuple[str, ...] = ()
    defaults: dict = field(default_factory=dict)
    given_only: bool = False


# The one table of per-command differences.
COMMANDS: dict[str, CommandOptions] = {
    "ask": CommandOptions(),
    # The flags set the server's defaults; a request may override the `request` fields. Its passages are cut to a
    # bounded length, so that one long row cannot hold the engine (README, "Security").
    "serve": CommandOptions(defaults={"max_passage_tokens": SERVE_MAX_PASSAGE_TOKENS}),
    # The seed's evaluation: its --use_* switches are store_true, off unless given. The task comes from its own
    # --task (evaluation tasks) and sets `closed`; its --batch_size counts questions per call (the runner's), and
    # the engine's rows follow from it (eval.answerer.answer_options).
    # Its score weights are the seed's (1 each), not the confidence rule the other commands default to.
    "eval": CommandOptions(excluded=("task", "closed", "batch_size"), given_only=True,
                           defaults={"use_seqscore": False, "use_groundness": False, "use_utility": False,
                                     "w_rel": 1.0, "w_sup": 1.0, "w_use": 1.0}),
    # The HTTP request fields (openrag.serve.schemas): the prompt format, batching and the passage cut stay the server's.
    "request": CommandOptions(excluded=("prompt_format", "batch_size", "max_passage_tokens"), given_only=True),
}


def option_fields(command: str) -> list:
    """The dataclass fields ``command`` takes as flags (or request fields), in declaration order."""
    excluded = COMMANDS[command].excluded
    return [f for f in fields(AnswerOptions) if f.name not in excluded]


def default_of(name: str):
    return field_default(_FIELDS[name])


def add_option_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The ``answering`` flags of ``command``: one per field, choices from the registries."""
    spec, chosen = COMMANDS[command], option_fields(command)
    defaults = dict.fromkeys((f.name for f in chosen), None) if spec.given_only else spec.defaults
    add_field_flags(parser.add_argument_group("answering"), chosen, defaults)


def given_options(args: argparse.Namespace, command: str) -> dict:
    """The options ``command``'s flags set: all of them, or (``given_only``) those given."""
    values = {f.name: getattr(args, f.name) for f in option_fields(command)}
    if COMMANDS[command].given_only:
        values = {k: v for k, v in values.items() if v is not None}
    return values
