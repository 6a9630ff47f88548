"""``OpenRAG``: answer questions with adaptive retrieval and candidate scoring (docs/method.md sections 5 and 6).

This layer knows reflection tokens and passages; the engine (engine.py) knows token ids and probabilities.
Per batch of questions: prefill each prompt once; decide whether to retrieve (the token rule needs only the
prefill, the confidence rules need the answer generated after a forced ``[No Retrieval]``); then generate
one candidate per passage (with ``chain``, multi-hop, one more whose evidence is all of them in one chain),
all rows of all questions together, score each candidate and pick the answer.

Questions without passages are given the retriever's, if there is one. Its query is the question, or with
``query="question+answer"`` the question followed by the model's no-retrieval answer (a multi-hop query: the
draft names the bridge entity the question does not). That answer is generated first, for the batch, and is
then the question's no-retrieval answer too: the confidence rules do not generate it again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from ..bundled_names import DEFAULT_NAME
from ..errors import InputError
from ..model.reflection import NO_RETRIEVAL
from ..passage import Passage, read_passage, titled_text
from ..tasks import evidence_chain, get_task
from . import prompts
from .backend_types import BackendOptions, engine_tokens
from .backends import load_backend
from .engine import Engine, RowResult
from .options import AnswerOptions
from .passage_cap import cap_passage, passage_label
from .scoring import ANSWER_SIGNALS, answer_signals, candidate_score, choose, decide, get_rule, postprocess, prefill_signals, score_terms

CHUNK_BATCHES = 8  # questions are prefilled and decided in chunks of up to this many engine batches of rows


def chain_of(passages: list[Passage]) -> Passage:
    """One passage holding ``passages`` as a multi-hop chain, untitled (its parts carry their titles)."""
    return Passage(text=evidence_chain([titled_text(p.title, p.text) for p in passages]), chained=len(passages))


def has_chain(task: str, chain: bool, passages: int) -> bool:
    """Whether a question with ``passages`` passages gets the chain candidate: asked for, on a multi-hop task, of two or more."""
    return chain and passages > 1 and get_task(task).family == "multihop"


@dataclass
class Candidate:
    """One evidence row: the passage, what the model answered from it, and the terms of its score."""

    passage: dict  # Passage.to_dict(): {"title", "text"} as given to the model (cut if it did not fit), and what is
    # known of id, score, is_gold; "chained": n for the chain of the first n passages (AnswerOptions.chain)
    text: str  # post-processed answer
    score: float
    relevance: float
    groundedness: float
    utility: float
    seq_score: float
    raw: str = ""  # generated text with its reflection tokens
    tokens: int = 0


@dataclass
class Answer:
    question: str
    text: str  # the final answer
    retrieved: bool  # whether the answer came from evidence
    mode: str
    retrieval_rule: str | None = None  # the adaptive rule that decided (None outside adaptive mode)
    retrieval_value: float | None = None  # its value: P([Retrieval]) share, or min/mean token probability
    threshold: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    no_retrieval_text: str | None = None  # the answer after a forced [No Retrieval], when one was generated
    signals: dict[str, float] = field(default_factory=dict)  # every rule's value that came for free (scoring.RULES):
    # p_retrieve (always), minp and meanp (when a no-retrieval answer was generated)
    query: str | None = None  # what the retriever was asked, when the passages came from it
    retrieved_passages: list[dict] = field(default_factory=list)  # what it returned ({title, text, id, score})
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# -- the pipeline -------------------------------------------------------------------------------------


@dataclass
class _Question:
    """Working state of one question inside a batch."""

    index: int
    question: str
    passages: list[Passage]
    prompt: str
    answer: Answer
    rows: list[list[int]] = field(default_factory=list)  # evidence rows, one per usable passage
    used: list[Passage] = field(default_factory=list)  # the passages of those rows, as given (maybe cut)
    wants: bool | None = None  # the retrieval decision (None: waiting for the confidence rule)


class OpenRAG:
    """An Open-RAG model ready to answer: ``OpenRAG.from_pretrained(name).answer(question, passages)``.

    ``retriever``: optional object with ``search(queries, top_k) -> list[list[passage]]``, used when a
    question comes without passages (``options.query`` says what it is asked). ``prompt_format``: the prompts
    the model was trained with, as its checkpoint records them (``openrag.model.load_pretrained``); None:
    released. ``options.prompt_format`` overrides it. ``engine``: a generation backend in place of the built-in
    :class:`~openrag.answer.engine.Engine` (same ``prefill``/``generate`` contract); ``model`` may then be None
    (vLLM holds the model in its own processes), and the engine's ``context_window`` stands for the model's.
    """

    def __init__(self, model, tokenizer, options: AnswerOptions | None = None, retriever=None, notes: Sequence[str] = (),
                 prompt_format: str | None = None, engine=None):
        self.model, self.tokenizer = model, tokenizer
        self.options = options or AnswerOptions()
        self.retriever = retriever
        self.notes = list(notes)
        if model is None and engine is None:
            raise ValueError("OpenRAG needs a model, or an engine that holds one")
        # Another generation backend may stand in: the pipeline uses only prefill() and generate() (engine.py).
        if engine is None:
            stop, watch, pad = engine_tokens(tokenizer, getattr(model, "generation_config", None))
            engine = Engine(model, stop, watch, pad)
        self.engine = engine
        if model is not None:
            self.context_window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        else:
            self.context_window = getattr(engine, "context_window", None)
        self.model_prompt_format = prompt_format or "released"

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_NAME, device=None, dtype=None, retriever=None,
                        backend: str | BackendOptions = "torch", **options) -> OpenRAG:
        """Load any checkpoint ``openrag.load_model`` reads (``default``: the bundled trained model).
        A model without reflection tokens gets them (untrained), with a note. ``backend``: ``torch`` (the
        built-in engine) or ``vllm``, by name or as :class:`~openrag.answer.backend_types.BackendOptions` with
        vLLM's settings (backends.BACKENDS)."""
        loaded = load_backend(name_or_path, device=device, dtype=dtype, backend=backend)
        return cls(loaded.model, loaded.tokenizer, AnswerOptions(**options), retriever=retriever, notes=loaded.notes,
                   prompt_format=loaded.prompt_format, engine=loaded.engine)

    def answer(self, question: str, passages: Sequence | None = None, choices=None, **options) -> Answer:
        return self.answer_batch([question], None if passages is None else [passages], None if choices is None else [choices], **options)[0]

    def answer_batch(self, questions: Sequence[str], passages: Sequence[Sequence] | None = None, choices: Sequence | None = None, **options) -> list[Answer]:
        """Answer many questions, batching the rows of several questions together (``batch_size`` rows).
        ``passages``: one list per question; None (for all, or as one question's entry): the retriever's, else none.
        ``choices``: one entry per question (None: none), for a task that takes them; else InputError."""
        opts = replace(self.options, **options)
        if opts.prompt_format is None:
            opts = replace(opts, prompt_format=self.model_prompt_format)
        if choices is not None and len(choices) != len(questions):
            raise ValueError(f"{len(choices)} choice lists for {len(questions)} questions")
        passages = [None] * len(questions) if passages is None else list(passages)
        if len(passages) != len(questions):
            raise ValueError(f"{len(passages)} passage lists for {len(questions)} questions")
        choices = list(choices) if choices is not None else [None] * len(questions)
        task = get_task(opts.task)
        for i, ch in enumerate(choices):  # before any work: the task's choices (tasks.Task.check_choices)
            try:
                task.check_choices(ch)
            except InputError as err:
                raise (InputError(f"question {i + 1} of {len(questions)}: {err}") if len(questions) > 1 else err) from None
        searched = self._search(questions, passages, choices, opts)
        for i, (_, hits, _) in searched.items():
            passages[i] = hits
        drafts = [searched[i][2] if i in searched else None for i in range(len(questions))]
        answers = self._answer(questions, passages, choices, opts, drafts)
        for i, (query, hits, _) in searched.items():
            answers[i].query = query
            answers[i].retrieved_passages = [read_passage(p, f'retrieved passage {k + 1}').to_dict() for k, p in enumerate(hits)]
        return answers

    def _search(self, questions, passages, choices, opts: AnswerOptions) -> dict[int, tuple[str, list, Answer | None]]:
        """Per question without passages: (query, the retriever's passages, the no-retrieval answer the query was
        built from, or None). Empty without a retriever or in no_retrieval mode."""
        wanted = [i for i, ps in enumerate(passages) if ps is None]
        if not wanted or self.retriever is None or opts.mode == "no_retrieval":
            return {}
        queries = [questions[i] for i in wanted]
        drafts: list[Answer | None] = [None] * len(wanted)
        if opts.query == "question+answer":
            drafts = self._answer(queries, [[] for _ in wanted], [choices[i] for i in wanted], replace(opts, mode="no_retrieval"))
            queries = [f"{q} {d.text}".strip() for q, d in zip(queries, drafts)]
        found = self.retriever.search(queries, top_k=opts.ndocs)
        return {i: (query, hits, draft) for i, query, hits, draft in zip(wanted, queries, found, drafts, strict=True)}

    def _answer(self, questions, passages, choices, opts: AnswerOptions, drafts=None) -> list[Answer]:
        """``drafts``: per question, None or its no-retrieval answer generated already (reused, not redone)."""
        evidence = [[read_passage(p, f'question {i + 1}, passage {k + 1}') for k, p in enumerate((ps or [])[: opts.ndocs])]
                    for i, ps in enumerate(passages)]
        evidence = [ps + [chain_of(ps)] if has_chain(opts.task, opts.chain, len(ps)) else ps for ps in evidence]
        drafts = drafts or [None] * len(questions)
        answers: list[Answer] = []
        for chunk in self._chunks(evidence, opts):
            answers.extend(self._answer_chunk([questions[i] for i in chunk], [evidence[i] for i in chunk],
                                              [choices[i] for i in chunk], opts, [drafts[i] for i in chunk]))
        return answers

    @staticmethod
    def _chunks(evidence: list[list[Passage]], opts: AnswerOptions) -> list[list[int]]:
        """Consecutive questions whose rows (at most one per passage, at least one) fit in ``CHUNK_BATCHES``
        batches: the engine decodes ``batch_size`` of them at a time and refills the batch from the rest."""
        chunks, current, rows = [], [], 0
        for i, ps in enumerate(evidence):
            need = 1 if opts.mode == "no_retrieval" else max(1, len(ps))
            if current and rows + need > CHUNK_BATCHES * opts.batch_size:
                chunks.append(current)
                current, rows = [], 0
            current.append(i)
            rows += need
        return chunks + ([current] if current else [])

    def _answer_chunk(self, questions, evidence, choices, opts: AnswerOptions, drafts) -> list[Answer]:
        start = time.perf_counter()
        qs = []
        for i, (question, ps, ch) in enumerate(zip(questions, evidence, choices)):
            answer = Answer(question=question, text="", retrieved=False, mode=opts.mode, notes=list(self.notes))
            qs.append(_Question(i, question, ps, prompts.question_prompt(opts.task, question, ch, opts.prompt_format), answer))
        prompt_ids = [self._encode(q.prompt) for q in qs]
        for q, ids in zip(qs, prompt_ids):
            self._check_fits(q, len(ids), opts)
        prefixes = self.engine.prefill(prompt_ids)

        for q, prefix in zip(qs, prefixes):
            self._decide_early(q, prefix, opts)

        for q, draft in zip(qs, drafts):
            if draft is not None:
                q.answer.no_retrieval_text = draft.no_retrieval_text
                q.answer.signals.update({k: draft.signals[k] for k in ANSWER_SIGNALS})
        first = [q for q in qs if not (q.wants and q.rows)]
        fresh = [q for q in first if q.answer.no_retrieval_text is None]
        results = self._run(prefixes, fresh, [q for q in qs if q.wants and q.rows], opts)
        later = []
        for q in first:
            if q.answer.no_retrieval_text is None:
                row = results[(q.index, "no_retrieval")]
                q.answer.no_retrieval_text = self._text(row)[0]
                q.answer.signals.update(answer_signals(row))
            if q.wants is None:  # a rule on the no-retrieval answer decides now
                q.answer.retrieval_value = q.answer.signals[get_rule(opts.retrieval_rule).signal]
                q.wants = decide(opts.retrieval_rule, q.answer.retrieval_value, opts.gamma)
                if q.wants and q.rows:
                    later.append(q)
        if later:
            results.update(self._run(prefixes, [], later, opts))

        seconds = time.perf_counter() - start
        for q in qs:
            self._settle(q, results, opts)
            q.answer.timings = {"seconds": seconds / len(qs), "batch_seconds": seconds, "batch_questions": float(len(qs))}
        return [q.answer for q in qs]

    def _decide_early(self, q: _Question, prefix, opts: AnswerOptions) -> None:
        """Every decision that needs no generation (``q.wants``; None = wait for a confidence rule), and the
        evidence rows of the questions that may retrieve."""
        a = q.answer
        a.signals.update(prefill_signals(prefix.first))
        if opts.mode == "adaptive_retrieval":
            a.retrieval_rule, a.threshold = opts.retrieval_rule, opts.gamma
            rule = get_rule(opts.retrieval_rule)
            if not rule.from_answer:
                a.retrieval_value = a.signals[rule.signal]
                q.wants = decide(rule.name, a.retrieval_value, opts.gamma)
        else:
            q.wants = opts.mode == "always_retrieve"
        if q.wants is not False:
            self._build_evidence_rows(q, opts)

    def _settle(self, q: _Question, results: dict, opts: AnswerOptions) -> None:
        if q.wants and q.rows:
            self._finish_with_evidence(q, results, opts)
            return
        q.answer.text = q.answer.no_retrieval_text
        if not q.passages and opts.mode != "no_retrieval":
            q.answer.notes.append("no passages were given (pass passages=... or a retriever); answered without retrieval")
        elif q.wants:
            q.answer.notes.append("retrieval was chosen but no passage fits the context window; answered without retrieval")

    def _run(self, prefixes, no_retrieval: list[_Question], with_evidence: list[_Question], opts) -> dict:
        """Generate the no-retrieval rows of some questions and the evidence rows of others, all at once."""
        keys, rows = [], []
        for q in no_retrieval:
            keys.append((q.index, "no_retrieval"))
            rows.append((q.index, self._encode(q.prompt + NO_RETRIEVAL)))
        for q in with_evidence:
            for k, ids in enumerate(q.rows):
                keys.append((q.index, k))
                rows.append((q.index, ids))
        if not rows:
            return {}
        return dict(zip(keys, self.engine.generate(prefixes, rows, opts.max_new_tokens, max_batch=opts.batch_size)))

    def _finish_with_evidence(self, q: _Question, results: dict, opts: AnswerOptions) -> None:
        for k, passage in enumerate(q.used):
            row = results[(q.index, k)]
            text, raw = self._text(row)
            terms = score_terms(row)
            q.answer.candidates.append(Candidate(passage=passage.to_dict(), text=text,
                                                 score=candidate_score(terms, opts), raw=raw, tokens=len(row.tokens), **terms))
        q.answer.retrieved = True
        q.answer.text = choose(q.answer.candidates, opts.is_closed)

    def _build_evidence_rows(self, q: _Question, opts: AnswerOptions) -> None:
        """One row per passage, each cut from its end (with a note) where it would overflow the context."""
        limit = None if self.context_window is None else self.context_window - opts.max_new_tokens
        for k, passage in enumerate(q.passages):
            passage, note = cap_passage(self.tokenizer, k, passage, opts.max_passage_tokens)
            q.answer.notes.extend([note] if note else [])
            ids = self._evidence_ids(q.prompt, passage, opts)
            if limit is not None and len(ids) > limit:
                passage, ids = self._cut(q, k, passage, ids, opts, limit)
                if ids is None:
                    continue
            q.rows.append(ids)
            q.used.append(passage)

    def _cut(self, q: _Question, k: int, passage: Passage, ids: list[int], opts: AnswerOptions, limit: int):
        """The passage with its text cut from the end so that its row fits in ``limit`` tokens (a note says
        so), or (passage, None) when not even an empty text fits."""
        text_ids = self.tokenizer(passage.text, add_special_tokens=False).input_ids
        keep = len(text_ids)
        for _ in range(16):  # re-tokenising the cut text can shift a token or two; converge in a few steps
            keep = max(0, keep - (len(ids) - limit))
            cut = replace(passage, text=self.tokenizer.decode(text_ids[:keep]))
            ids = self._evidence_ids(q.prompt, cut, opts)
            if len(ids) <= limit or keep == 0:
                break
        where = passage_label(k, passage)
        if len(ids) > limit:
            q.answer.notes.append(f"{where} left out: even empty it does not fit the context window of "
                                  f"{self.context_window} tokens with max_new_tokens={opts.max_new_tokens}")
            return passage, None
        q.answer.notes.append(f"{where} cut from {len(text_ids)} to {keep} tokens to fit the context window of "
                              f"{self.context_window} tokens")
        return cut, ids

    def _check_fits(self, q: _Question, n_prompt: int, opts: AnswerOptions) -> None:
        if self.context_window is not None and n_prompt + 1 + opts.max_new_tokens > self.context_window:
            raise InputError(f"question {q.question[:60]!r} takes {n_prompt} tokens; with max_new_tokens="
                             f"{opts.max_new_tokens} it exceeds the context window of {self.context_window} tokens. "
                             "Shorten it or lower max_new_tokens.")

    def _evidence_ids(self, prompt: str, passage: Passage, opts: AnswerOptions) -> list[int]:
        content = prompts.evidence_content(opts.task, passage.title, passage.text, opts.prompt_format)
        return self._encode(prompt + prompts.evidence_suffix(content))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def _text(self, row: RowResult) -> tuple[str, str]:
        """(post-processed answer, raw text with reflection tokens) of a row, without its stop token."""
        tokens = row.tokens[:-1] if row.stopped else row.tokens
        raw = self.tokenizer.decode(tokens, skip_special_tokens=False)
        eos = [self.tokenizer.eos_token] if self.tokenizer.eos_token else []
        return postprocess(self.tokenizer.decode(tokens, skip_special_tokens=True), eos), raw
