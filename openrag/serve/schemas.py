"""Request bodies of the HTTP API, with the limits that keep one request from monopolising the server.

Every field is validated before a request reaches the queue; a bad one is answered 422 naming it.
The answering options are :class:`openrag.answer.AnswerOptions`' fields (the ``request`` entry of its
per-command table), with this file's limits; a field left out keeps the server's default (the flags
``openrag serve`` was started with).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, field_validator

from ..answer.options import option_fields
from ..flags import field_kind
from ..tasks import MAX_CHOICES

MAX_QUESTION_CHARS = 4_000
MAX_TITLE_CHARS = 500
MAX_PASSAGE_CHARS = 20_000
MAX_PASSAGES = 32
MAX_CHOICE_CHARS = 500
MAX_NEW_TOKENS = 1_024
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 20_000

Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUESTION_CHARS)]
Choice = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHOICE_CHARS)]
WEIGHT = dict(ge=-100, le=100, allow_inf_nan=False)
# Per option, the bounds a request must respect (the others: the option's type and choices).
OPTION_LIMITS = {"threshold": dict(ge=-1e6, le=1e6, allow_inf_nan=False), "ndocs": dict(ge=1, le=MAX_PASSAGES),
                 "max_new_tokens": dict(ge=1, le=MAX_NEW_TOKENS), "w_rel": WEIGHT, "w_sup": WEIGHT, "w_use": WEIGHT}


def _option_model() -> type[BaseModel]:
    """Every request option of AnswerOptions as an optional field: None means "the server's default"."""
    specs = {}
    for f in option_fields("request"):
        kind = Literal[tuple(f.metadata["choices"])] if "choices" in f.metadata else field_kind(f)
        strict = kind in (bool, int, float)  # "ndocs": true or "3", "chain": "yes" are mistakes (JSON integers stay floats)
        specs[f.name] = (kind | None, Field(default=None, description=f.metadata["help"], strict=strict or None,
                                            **OPTION_LIMITS.get(f.name, {})))
    return create_model("AnswerOptionFields", **specs)


AnswerOptionFields = _option_model()
OPTION_FIELDS = tuple(AnswerOptionFields.model_fields)


class PassageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(default="", max_length=MAX_TITLE_CHARS)
    text: str = Field(min_length=1, max_length=MAX_PASSAGE_CHARS)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("a passage needs text, not only white space")
        return text


class AnswerFields(AnswerOptionFields):
    """The per-request answering options (all optional) and the evidence, shared by both endpoints."""

    passages: list[PassageIn] | None = Field(default=None, max_length=MAX_PASSAGES, description=
                                             "evidence; left out, the server's index (if any) is searched")
    choices: list[Choice] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES,
                                         description="answer choices, for task arc_c")

    def options(self) -> dict:
        """The answering options this request sets (the pipeline's defaults stand for the others)."""
        return {name: getattr(self, name) for name in OPTION_FIELDS if getattr(self, name) is not None}

    def passage_dicts(self) -> list[dict] | None:
        return None if self.passages is None else [p.model_dump() for p in self.passages]


class AnswerRequest(AnswerFields):
    """``POST /v1/answer``."""

    model_config = ConfigDict(extra="forbid")

    question: Question


class ChatMessage(BaseModel):
    """An OpenAI chat message; ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts."""

    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: accepted and ignored

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")

    @field_validator("content")
    @classmethod
    def _bounded(cls, content):
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise ValueError("a text part needs a string 'text'")
        text = content if isinstance(content, str) else "".join(
            p.get("text", "") for p in content or [] if isinstance(p.get("text"), str))
        if len(text) > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message may hold at most {MAX_MESSAGE_CHARS} characters, got {len(text)}")
        try:  # a str field checks this itself; a union with list[dict] lets it through
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"the text holds {text[err.start]!r} at character {err.start}, half of a UTF-16 surrogate "
                             "pair and no character; send valid Unicode") from None
        return content


class ChatRequest(AnswerFields):
    """``POST /v1/chat/completions``: OpenAI's request, plus the answering options and ``passages``.

    Sampling fields (temperature, top_p, ...) are accepted and ignored: answers are greedy."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(default=None, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS, strict=True)
    stream: bool = Field(default=False, strict=True)
    n: int = Field(default=1, strict=True)

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, stream: bool) -> bool:
        if stream:
            raise ValueError("streaming is not supported; send stream=false")
        return stream

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported (answers are greedy)")
        return n

    def question(self) -> str:
        """The last user message, which must not be empty."""
        for message in reversed(self.messages):
            if message.role == "user":
                text = message.text().strip()
                if not text:
                    raise ValueError("the last user message is empty")
                if len(text) > MAX_QUESTION_CHARS:
                    raise ValueError(f"the last user message (the question) may hold at most {MAX_QUESTION_CHARS} "
                                     f"characters, got {len(text)}")
                return text
        raise ValueError("no message has role 'user'; the last user message is the question")

    def options(self) -> dict:
        options = super().options()
        tokens = self.max_completion_tokens or self.max_tokens
        if tokens is not None and "max_new_tokens" not in options:
            options["max_new_tokens"] = tokens
        return options
