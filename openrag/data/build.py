"""``openrag data build``: QA datasets -> Open-RAG training instances (docs/method.md section 3).

Each question becomes several instances, one per piece of evidence (labels: see labels.py):

=================  ===========================================================================
kind               output
=================  ===========================================================================
``gold_chain``     ``[Retrieval]<paragraph>Knowledge 1: ... [SEP] ... Knowledge 2: ...</paragraph>[Relevant]a[Fully supported][Utility:5]``
``gold``           ``[Retrieval]<paragraph>title\\ntext</paragraph>[Relevant]a[<support>][Utility:k]``
``distractor``     ``[Retrieval]<paragraph>title\\ntext</paragraph>[Irrelevant]`` (relevance only; with
                   ``distractor_answers``: ``...[Irrelevant]a[Utility:k]``)
``no_retrieval``   ``[No Retrieval]a[Utility:k]`` (questions that need no retrieval: labels.py)
``fact_gold``      a single-hop question from one fact of the row (facts.py), its passage, ``[Fully supported]``
``fact_distractor``  the same question and a hard distractor, relevance only
=================  ===========================================================================

The retrieval decision is trained once per question, not once per instance, so that the two labels are
weighed by questions: a question that needs retrieval trains ``[Retrieval]`` in its first evidence
instance, one that does not trains ``[No Retrieval]`` in its ``no_retrieval`` instance, and every other
evidence instance carries ``"train_decision": false``: its leading ``[Retrieval]`` is there only because
evidence follows, and is not a target. Gold-only rows (``hotpotqa_train_gold500``) borrow their distractors from other rows of the
same input: the closest of a seeded sample of their passages.

The output is JSON lines in the released ``conversation`` schema (``instruction``, ``conversation:
[{input, output}]``, ``corpus``) plus ``id``, ``dataset`` and ``kind``; it is written to a temporary file
and renamed at the end, so an interrupted run leaves no file that looks complete.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..model.reflection import (
    FULLY_SUPPORTED,
    IRRELEVANT,
    NO_RETRIEVAL,
    REFLECTION_TOKENS,
    RELEVANT,
    RETRIEVAL,
    UTILITY,
    evidence_suffix,
)
from . import labels
from ..passage import Passage
from .examples import ErrorLog, QAExample, RowError, normalize_question
from .readers import iter_rows, read_examples, split_window


@dataclass
class Instance:
    """One training instance, kept as its labels so that a critic can change them before output."""

    id: str
    dataset: str
    kind: str  # gold_chain | gold | distractor | no_retrieval
    input: str
    answer: str | None  # None: relevance only (the output ends after [Irrelevant])
    passage: str | None = None  # None: [No Retrieval]
    relevant: bool | None = None
    support: str | None = None  # after [Relevant] only
    utility: int = 5
    train_decision: bool = True  # False: the leading [Retrieval] is not a target (another instance trains the decision)

    @property
    def output(self) -> str:
        if self.passage is None:
            return f"{NO_RETRIEVAL}{self.answer}{UTILITY[self.utility - 1]}"
        evidence = evidence_suffix(self.passage)
        if not self.relevant:
            tail = "" if self.answer is None else f"{self.answer}{UTILITY[self.utility - 1]}"
            return f"{evidence}{IRRELEVANT}{tail}"
        return f"{evidence}{RELEVANT}{self.answer}{self.support}{UTILITY[self.utility - 1]}"

    def to_row(self) -> dict:
        row = {
            "instruction": "",
            "conversation": [{"input": self.input, "output": self.output}],
            "corpus": "",
            "id": self.id,
            "dataset": self.dataset,
            "kind": self.kind,
        }
        if not self.train_decision:
            row["train_decision"] = False
        return row


@dataclass
class BuildConfig:
    seed: int = 0
    distractors: int | None = None  # hard distractors per question; None: as many as its gold instances (balanced)
    max_gold: int = 4  # single-gold instances per question (a retrieved list may hold many answer-bearing passages)
    max_per_dataset: int | None = None  # questions kept per dataset (a seeded sample), after exclusion
    chain: bool = True  # a gold_chain instance for multi-hop questions
    no_retrieval: bool = True  # [No Retrieval] instances for questions that need no retrieval
    distractor_answers: bool = False  # distractor instances go on to the answer (else they end at [Irrelevant])
    facts: bool = True  # single-hop instances from the facts a row names (MuSiQue hops, 2Wiki evidences)
    max_facts: int | None = None  # facts used per question at most (the first ones in the row's order)
    held_out: int = 0  # questions (a seeded sample of all inputs) whose instances go to BuildResult.held_out, not to training

    def __post_init__(self):  # messages name the `openrag data build` flags of the same names
        if not isinstance(self.max_gold, int) or self.max_gold < 1:
            raise ValueError(f"--max_gold must be at least 1 (each question needs a gold instance), got {self.max_gold!r}")
        if not isinstance(self.held_out, int) or self.held_out < 0:
            raise ValueError(f"--held_out must be 0 or more, got {self.held_out!r}")
        for name in ("distractors", "max_per_dataset", "max_facts"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"--{name} must be 0 or more, got {value!r}")


def instances_for(ex: QAExample, config: BuildConfig = BuildConfig()) -> list[Instance]:
    """The instances of one question; a RowError when it has no gold passage to learn from."""
    gold = labels.gold_passages(ex)
    if not gold:
        field_name = "ctxs" if ex.ranked else "passages"
        file, _, line = ex.source.rpartition(":")
        raise RowError(file, int(line) if line.isdigit() else None, field_name, "no gold passage (none flagged, none contains an answer)")
    text_in, answer = labels.instance_input(ex), ex.answers[0]
    needs = labels.needs_retrieval(ex)
    base = dict(id=ex.id, dataset=ex.dataset, input=text_in, train_decision=False)
    multi = labels.is_multi_hop(ex, gold)
    out = []
    if multi and config.chain:
        out.append(Instance(kind="gold_chain", answer=answer, passage=labels.render_chain(gold), relevant=True, support=FULLY_SUPPORTED,
                            utility=labels.UTILITY_OF_SUPPORT[FULLY_SUPPORTED], **base))
    for p in gold[: config.max_gold]:
        support = labels.single_support(ex, p, multi)
        out.append(Instance(kind="gold", answer=answer, passage=labels.render_passage(p), relevant=True, support=support, utility=labels.UTILITY_OF_SUPPORT[support], **base))
    low = labels.utility_without_support(ex)
    wanted = config.distractors if config.distractors is not None else len(gold[: config.max_gold])
    shown = answer if config.distractor_answers else None
    for p in labels.hard_distractors(ex, gold, wanted):
        out.append(Instance(kind="distractor", answer=shown, passage=labels.render_passage(p), relevant=False, utility=low, **base))
    out[0].train_decision = needs  # the question's one [Retrieval] target (out[0] is its first gold evidence)
    if config.no_retrieval and not needs:
        out.append(Instance(kind="no_retrieval", answer=answer, utility=low, **{**base, "train_decision": True}))
    if config.facts:
        out += fact_instances(ex, config.max_facts)
    return out


def fact_instances(ex: QAExample, max_facts: int | None = None) -> list[Instance]:
    """Per fact of the row: its single-hop question with its own passage, and with its hardest distractor."""
    out = []
    for k, fact in enumerate(ex.sub_questions[:max_facts]):
        passages = [Passage(p.title, p.text, is_gold=i == fact.passage) for i, p in enumerate(ex.passages)]
        single = QAExample(f"{ex.id}/fact{k}", fact.question, [fact.answer], passages, ranked=False, dataset=ex.dataset, source=ex.source)
        base = dict(id=single.id, dataset=ex.dataset, input=fact.question, train_decision=False)
        gold = passages[fact.passage]
        out.append(Instance(kind="fact_gold", answer=fact.answer, passage=labels.render_passage(gold), relevant=True,
                            support=FULLY_SUPPORTED, utility=labels.UTILITY_OF_SUPPORT[FULLY_SUPPORTED],
                            **{**base, "train_decision": True}))  # the fact's one decision
        for p in labels.hard_distractors(single, [gold], 1):
            out.append(Instance(kind="fact_distractor", answer=None, passage=labels.render_passage(p), relevant=False, utility=1, **base))
    return out


def borrow_distractors(examples: list[QAExample], rng: random.Random, sample: int = 40) -> None:
    """Give each gold-only row non-gold passages: a seeded sample of the other rows' passages (in place)."""
    pool = [(i, p) for i, ex in enumerate(examples) for p in ex.passages]
    for i, ex in enumerate(examples):
        if ex.ranked or any(not p.is_gold for p in ex.passages):
            continue
        own = {p.text for p in ex.passages}  # another row may hold the same paragraph: it is gold here
        picked = [p for j, p in rng.sample(pool, min(sample, len(pool))) if j != i and p.text not in own]
        ex.passages = ex.passages + [Passage(p.title, p.text, is_gold=False) for p in picked]


# ------------------------------------------------------------------------------------------ exclusion

_ID_FIELDS = ("_id", "id", "question_id")
_QUESTION_FIELDS = ("question", "question_text", "instruction")


@dataclass
class Exclusion:
    """Questions that must not reach training output: matched by id and by normalised question text."""

    ids: set[str] = field(default_factory=set)
    questions: set[str] = field(default_factory=set)

    @classmethod
    def from_files(cls, specs: Iterable[str], task: str | None = None) -> Exclusion:
        """Read every row of each evaluation file (``path[:skip=N][:limit=M]`` or hub name), leniently:
        a row only needs an id or a question to be excluded, even one a QA reader would reject.

        A row of the window that cannot be read (malformed JSON, not an object) is an error, never skipped:
        its question would reach the training data. So is a file whose reading stops at an unreadable row
        before the window ends (a broken JSON list cannot be read past its first error)."""
        out = cls()
        for spec in specs:
            name, skip, limit = split_window(spec)
            source, rows = iter_rows(name, task)
            stopped_at = None  # the last row read, when it was unreadable
            for index, (line, row) in enumerate(rows):
                if limit is not None and index >= skip + limit:
                    break
                bad = row if isinstance(row, RowError) else None
                if bad is None and not isinstance(row, dict):
                    bad = RowError(source, line, "row", f"expected a JSON object, got {type(row).__name__}")
                if bad is not None and index >= skip:
                    raise _unreadable(spec, bad, "that row is inside the excluded rows: repair it in the file")
                stopped_at = bad
                if index >= skip:
                    out.add_row(row)
            else:
                if stopped_at is not None:  # e.g. a JSON list broken before the window: its rows were never read
                    raise _unreadable(spec, stopped_at, "the file cannot be read past it, so the excluded rows after it "
                                      "were never read: repair the file")
        return out

    def add_row(self, row: dict) -> None:
        for key in _ID_FIELDS:
            if row.get(key) not in (None, ""):
                self.ids.add(str(row[key]))
        for key in _QUESTION_FIELDS:
            if isinstance(row.get(key), str) and row[key].strip():
                self.questions.add(normalize_question(row[key]))
        turns = row.get("conversation")
        if isinstance(turns, list) and turns and isinstance(turns[0], dict) and isinstance(turns[0].get("input"), str):
            self.questions.add(normalize_question(turns[0]["input"]))

    def __contains__(self, ex: QAExample) -> bool:
        return ex.id in self.ids or normalize_question(ex.question) in self.questions

    def __len__(self) -> int:
        return len(self.questions | self.ids)


def _unreadable(spec: str, err: RowError, why: str) -> ValueError:
    return ValueError(f"--exclude {spec}: {err}; {why} and run again (an evaluation question left unread "
                      "could reach the training data)")


# ------------------------------------------------------------------------------------------ building


@dataclass
class BuildResult:
    instances: list[Instance]
    questions: Counter  # per dataset, questions that produced instances
    excluded: Counter  # per dataset
    sampled_out: Counter  # per dataset, dropped by max_per_dataset
    errors: ErrorLog
    decisions: Counter = field(default_factory=Counter)  # questions labelled [Retrieval] / [No Retrieval]
    duplicates: Counter = field(default_factory=Counter)  # per dataset, questions an earlier input already gave
    held_out: list[Instance] = field(default_factory=list)  # instances of the held-out questions (config.held_out)
    held_out_questions: int = 0


def build(
    inputs: Iterable[str],
    config: BuildConfig = BuildConfig(),
    *,
    exclude: Exclusion | None = None,
    errors: ErrorLog | None = None,
    critic=None,
) -> BuildResult:
    """Read every input (a path with an optional ``:skip=N:limit=M`` window, or a hub name), drop
    excluded questions and repeats of a question already read (the first reading is kept), build and label
    instances, and shuffle them with ``config.seed``."""
    errors = errors if errors is not None else ErrorLog()
    exclude = exclude or Exclusion()
    by_dataset: dict[str, list[QAExample]] = defaultdict(list)
    excluded: Counter = Counter()
    duplicates: Counter = Counter()
    seen: set[str] = set()
    rng = random.Random(config.seed)
    for spec in inputs:
        kept = []
        for ex in read_examples(spec, errors=errors):
            key = normalize_question(ex.question)
            if ex in exclude:
                excluded[ex.dataset] += 1
            elif key in seen:
                duplicates[ex.dataset] += 1
            else:
                seen.add(key)
                kept.append(ex)
        borrow_distractors(kept, rng)
        for ex in kept:
            by_dataset[ex.dataset].append(ex)
    sampled_out: Counter = Counter()
    chosen: list[QAExample] = []
    for dataset in sorted(by_dataset):
        examples = by_dataset[dataset]
        if config.max_per_dataset is not None and len(examples) > config.max_per_dataset:
            keep = sorted(rng.sample(range(len(examples)), config.max_per_dataset))
            sampled_out[dataset] = len(examples) - len(keep)
            examples = [examples[i] for i in keep]
        chosen += examples
    held_out_ids = {id(chosen[i]) for i in rng.sample(range(len(chosen)), min(config.held_out, len(chosen)))}
    instances: list[Instance] = []
    held_out: list[Instance] = []
    held_out_questions = 0
    questions: Counter = Counter()
    decisions: Counter = Counter()
    for ex in chosen:
        try:
            made = instances_for(ex, config)
        except RowError as err:
            errors.report(err)
            continue
        if id(ex) in held_out_ids:
            held_out.extend(made)
            held_out_questions += 1  # counted once its instances exist (a bad row is neither trained nor held out)
            continue
        questions[ex.dataset] += 1
        decisions[RETRIEVAL if labels.needs_retrieval(ex) else NO_RETRIEVAL] += 1
        instances.extend(made)
    if critic is not None:
        for inst in instances + held_out:
            critic.relabel(inst)
    rng.shuffle(instances)
    return BuildResult(instances, questions, excluded, sampled_out, errors, decisions, duplicates, held_out, held_out_questions)


# ------------------------------------------------------------------------------------------ stats


def token_counts(outputs: Iterable[str]) -> dict[str, int]:
    """Instances whose output contains each reflection token (every token listed, zeros included)."""
    counts = dict.fromkeys(REFLECTION_TOKENS, 0)
    for out in outputs:
        for token in REFLECTION_TOKENS:
            if token in out:
                counts[token] += 1
    return counts


def length_stats(pairs: Iterable[tuple[str, str]], tokenizer, max_length: int) -> dict:
    """Token lengths of ``(input, output)`` instances as tokenised for training, and how many
    ``max_length`` would shorten."""
    from .tokenize import tokenize_instance

    lengths = [len(tokenize_instance(tokenizer, i, o, max_length=1 << 30).input_ids) for i, o in pairs]
    if not lengths:
        return {"max_length": max_length, "instances": 0, "truncated": 0}
    ordered = sorted(lengths)
    return {
        "max_length": max_length,
        "instances": len(lengths),
        "min": ordered[0],
        "mean": round(statistics.fmean(lengths), 1),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "truncated": sum(n > max_length for n in lengths),
    }


def build_report(result: BuildResult, tokenizer=None, tokenizer_name: str | None = None, max_length: int = 4096) -> dict:
    per_dataset: dict[str, dict] = {}
    for inst in result.instances:
        entry = per_dataset.setdefault(inst.dataset, {"questions": result.questions[inst.dataset], "instances": 0, "kinds": Counter()})
        entry["instances"] += 1
        entry["kinds"][inst.kind] += 1
    for name, entry in per_dataset.items():
        entry["kinds"] = dict(sorted(entry["kinds"].items()))
        entry["excluded"] = result.excluded[name]
        entry["sampled_out"] = result.sampled_out[name]
        entry["duplicates"] = result.duplicates[name]
    report = {
        "instances": len(result.instances),
        "questions": sum(result.questions.values()),
        "per_dataset": per_dataset,
        "per_kind": dict(sorted(Counter(i.kind for i in result.instances).items())),
        "per_token": token_counts(i.output for i in result.instances),
        "questions_per_decision": {t: result.decisions[t] for t in (RETRIEVAL, NO_RETRIEVAL)},
        "excluded": sum(result.excluded.values()),
        "excluded_by_dataset": dict(result.excluded),
        "duplicates": sum(result.duplicates.values()),
        "held_out_questions": result.held_out_questions,
        "held_out_instances": len(result.held_out),
        "rows_skipped": result.errors.count,
        "skipped_by_field": result.errors.by_field(),
        "skipped_by_file": result.errors.by_file(),
    }
    if tokenizer is not None:
        report["tokens"] = {"tokenizer": tokenizer_name, **length_stats(((i.input, i.output) for i in result.instances), tokenizer, max_length)}
    return report
