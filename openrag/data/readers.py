"""Readers for every QA format the project meets, all producing :class:`QAExample`.

``read_examples(path_or_name)`` sniffs the format from the fields of the first row, so a file is read
as it is, whatever its extension says (``musique_dev200.jsonl`` from MIGRES was a ``.json`` of JSON lines):

======================  ===================================================================  ========
format                  fields                                                               passages
======================  ===================================================================  ========
``original``            HotpotQA / 2Wiki: ``_id, question, answer, context, supporting_facts``  unranked
``musique``             ``id, question, answer, answer_aliases, paragraphs[is_supporting]``    unranked
``ircot``               ``question_id, question_text, answers_objects, contexts``              unranked
``retrieved``           Self-RAG eval / openrag_bench: ``question, answers|answer, ctxs|top_contexts``  ranked
``gold_evidence``       ``question, answer, evidence[str]``: the gold paragraphs only, untitled  unranked
``sources``             ``question, answer, gold_source_indices, sources[title, text, is_gold]``  unranked
======================  ===================================================================  ========

``sources`` is HotpotQA distractor-train as one JSON object ``{split, seed, filters, examples: [...]}``
(``hotpotqa_train500_citeprobe.json``): each row's 10 paragraphs, the gold ones flagged and their gold
sentences named as ``[paragraph, sentence]`` pairs in ``gold_source_indices``, whose order (HotpotQA's
supporting-fact order) is the row's reasoning order. The flags and the pairs must agree.

Single-hop facts inside multi-hop rows become :class:`SubQuestion` s: MuSiQue's ``question_decomposition``
(a natural question, or ``entity >> relation``, with ``#k`` standing for hop k's answer) and 2Wiki's
``evidences`` triples ``[subject, relation, object]`` (the passage titled with the subject). A fact whose
answer is not in its passage is left out.

Rows of the paragraph-list formats without their paragraphs (36 rows of ``2wiki_dev200.jsonl`` have no
``context``) are bad rows, unless ``passages_required=False`` (``openrag eval --index``: a retriever supplies the
passages); they are read then with no passages and the gold titles the row names.

A path may carry a row window: ``dev.jsonl:skip=100`` (all but the first 100 rows) or
``dev.jsonl:limit=100`` (the first 100), counted over raw rows, bad ones included, so that the two
are exact complements. A name ``owner/dataset`` that is not a local path is loaded with
``datasets.load_dataset(name, task)``; one that looks like a path (``./``, ``../``, ``/``, ``~``, a data file
extension, or a first folder that exists here) and names no file is an error, never a hub request.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from .. import localpaths
from ..passage import Passage
from .examples import ErrorLog, QAExample, RowError, SubQuestion
from .facts import fact_question, passage_holds

log = logging.getLogger(__name__)

_WINDOW = re.compile(r"^(?P<path>.+?)((?::(?:skip|limit)=\d+)+)$")
_DATASET_HINTS = (
    ("2wiki", "2wikimultihopqa"),
    ("hotpot", "hotpotqa"),
    ("musique", "musique"),
    ("popqa", "popqa"),
    ("arc", "arc_c"),
    ("trivia", "triviaqa"),
    ("health", "pubhealth"),
)
_SPLIT_PREFERENCE = ("dev", "validation", "test", "train")
_ROW_LISTS = ("data", "examples")  # the field holding the rows of a file that is one JSON object


class _Bad(Exception):
    """A field problem inside a row parser; read_examples adds the file and line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


# ----------------------------------------------------------------------------------------------- paths


def split_window(spec: str | Path) -> tuple[str, int, int | None]:
    """``"dev.jsonl:skip=100:limit=50"`` -> ``("dev.jsonl", 100, 50)``; a plain path -> ``(path, 0, None)``."""
    spec = str(spec)
    match = _WINDOW.match(spec)
    if match is None or Path(spec).exists():
        return spec, 0, None
    skip, limit = 0, None
    for part in match.group(2).strip(":").split(":"):
        key, value = part.split("=")
        if key == "skip":
            skip = int(value)
        else:
            limit = int(value)
    return match.group("path"), skip, limit


_DATA_SUFFIXES = (".json", ".jsonl", ".jsonlines", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".bz2", ".xz", ".zst")


def looks_local(name: str) -> bool:
    """A path rather than a hub name (openrag.localpaths' rule), or a name ending in a data file extension."""
    return localpaths.looks_local(name) or name.lower().endswith(_DATA_SUFFIXES)


def is_hub_name(name: str) -> bool:
    return localpaths.is_hub_name(name) and not looks_local(name)


def read_utf8(path: Path) -> str:
    """A file's text, or ValueError naming the file and the line of its first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}); "
                         "convert the file first, e.g. `iconv -f latin1 -t utf-8`") from None


# ------------------------------------------------------------------------------------------- raw rows


def iter_json_rows(path: str | Path) -> Iterator[tuple[int, dict | RowError]]:
    """``(line, row)`` for a JSON-lines file or a JSON list; a malformed row comes as a RowError.

    A JSON list is decoded element by element so that each row knows the line it starts on; a broken
    list cannot be resynchronised, so its first error ends the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    text = read_utf8(path)
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _iter_json_list(text, start, str(path))
        return
    if text[start : start + 1] == "{" and not _first_line_parses(text):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            key = next((k for k in _ROW_LISTS if isinstance(whole.get(k), list)), None)
            if key is None:
                raise ValueError(f"{path} is one JSON object without a {' or '.join(map(repr, _ROW_LISTS))} list; "
                                 "expected JSON lines or a JSON list of rows")
            found = re.search(rf'"{key}"\s*:\s*\[', text)
            if found:  # decode the list in place, so that each row knows its line
                yield from _iter_json_list(text, found.end() - 1, str(path))
            else:
                yield from enumerate(whole[key], start=1)
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, RowError(str(path), number, "json", f"malformed JSON line ({err.msg} at column {err.colno})")


def _first_line_parses(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _iter_json_list(text: str, start: int, file: str) -> Iterator[tuple[int, dict | RowError]]:
    decoder = json.JSONDecoder()
    pos, line, n = start + 1, 1 + text.count("\n", 0, start), len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            yield line, RowError(file, line, "json", "the JSON list is not closed (truncated file?)")
            return
        if text[pos] == "]":
            return
        line = 1 + text.count("\n", 0, pos)
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            yield err.lineno, RowError(file, err.lineno, "json", f"malformed JSON ({err.msg}); the rest of the list is unreadable")
            return
        yield line, row
        pos = end


def _hub_rows(name: str, task: str | None) -> tuple[str, Iterator[tuple[int, dict]]]:
    try:
        import datasets

        loaded = datasets.load_dataset(name, task)
    except Exception as err:  # offline or unknown: say which and what to do instead
        raise FileNotFoundError(
            f"cannot load {name!r} (config {task!r}) through datasets ({type(err).__name__}: {err}); "
            "offline, pass a local file of the same schema"
        ) from err
    if hasattr(loaded, "keys"):
        splits = list(loaded.keys())
        split = next((s for s in _SPLIT_PREFERENCE if s in splits), splits[0])
        loaded = loaded[split]
    return f"{name}[{task}]" if task else name, ((i + 1, row) for i, row in enumerate(loaded))


def iter_rows(path_or_name: str | Path, task: str | None = None) -> tuple[str, Iterator[tuple[int, dict | RowError]]]:
    """``(source_name, rows)`` for a local file or a hub dataset, before any format is applied."""
    name = str(path_or_name)
    if Path(name).expanduser().exists():
        return name, iter_json_rows(Path(name).expanduser())
    if is_hub_name(name):
        return _hub_rows(name, task)
    if looks_local(name):
        raise FileNotFoundError(f"no data file at {name}: no such file (a local path, never looked up on the hub)")
    raise FileNotFoundError(f"no data file at {name}, and it is not a hub dataset name (owner/name)")


# ------------------------------------------------------------------------------------------- formats


def detect_format(row: dict) -> str:
    """The format of one row, from its fields (see the module docstring)."""
    if not isinstance(row, dict):
        raise ValueError(f"a data row must be a JSON object, got {type(row).__name__}")
    if "conversation" in row or ("corpus" in row and "instruction" in row):
        raise ValueError("this is Open-RAG training data (conversation/corpus/instruction); read it with openrag.data.load_training_instances")
    # A row of a paragraph-list format may lack its paragraphs: its other fields name the format.
    if "question_text" in row:
        return "ircot"
    if "paragraphs" in row or "question_decomposition" in row:
        return "musique"
    if "supporting_facts" in row and not ("ctxs" in row or "top_contexts" in row):
        return "original"
    if "evidence" in row and "question" in row and not ("ctxs" in row or "top_contexts" in row):
        return "gold_evidence"
    if "sources" in row and "question" in row:
        return "sources"
    if "question" in row or "instruction" in row:
        return "retrieved"
    if "title" in row and "text" in row:
        raise ValueError("this is a passage corpus (title, text), not questions")
    raise ValueError(f"unknown QA format with fields {sorted(row)[:12]}; see openrag.data.readers for the formats read")


def guess_dataset(source: str, fmt: str, row: dict) -> str:
    """Dataset name from the file name, else from the format's own fields."""
    lowered = Path(source.split("[")[0]).name.lower() + " " + source.lower()
    for hint, name in _DATASET_HINTS:
        if hint in lowered:
            return name
    if fmt == "musique":
        return "musique"
    if fmt == "original":
        return "2wikimultihopqa" if "evidences" in row else "hotpotqa"
    if fmt in ("gold_evidence", "sources"):
        return "hotpotqa"
    if fmt == "ircot":
        qid = str(row.get("question_id", ""))
        if re.match(r"^\dhop", qid):
            return "musique"
        return "2wikimultihopqa" if len(qid) == 32 else "hotpotqa"
    return "arc_c" if "choices" in row else "qa"


def _need(row: dict, *names: str):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise _Bad(names[0], "missing" + (f" (also looked for {', '.join(names[1:])})" if len(names) > 1 else ""))


def _text(value, field: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _Bad(field, f"expected a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _Bad(field, "empty")
    return text


def _answers(values, field: str) -> list[str]:
    if isinstance(values, (str, int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list):
        raise _Bad(field, f"expected a string or a list of strings, got {type(values).__name__}")
    out: list[str] = []
    for v in values:
        text = str(v).strip() if isinstance(v, (str, int, float)) and not isinstance(v, bool) else ""
        if text and text not in out:
            out.append(text)
    if not out:
        raise _Bad(field, "empty answer")
    return out


def _as_list(value, field: str) -> list:
    """A field that holds a list: absent (None) is an empty list, a lone string a one-element list (never its
    letters); any other type is a bad field."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _Bad(field, f"expected a list (or a single string), got {type(value).__name__} {value!r:.40}")
    return value


def _flag(value, field: str) -> bool:
    """A gold flag: true/false or 1/0 (``bool("false")`` would be True). Absent (None) is False."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _Bad(field, f"expected true or false (or 1 or 0), got {value!r:.40}; write the flag as a JSON boolean")


def _sentences(value, field: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if not isinstance(value, list):
        raise _Bad(field, f"expected a list of sentences, got {type(value).__name__}")
    # HotpotQA sentences carry their leading space, 2Wiki's do not: strip and join with one space.
    return " ".join(s.strip() for s in value if isinstance(s, str) and s.strip())


def _paragraph_list(row: dict, field: str, required: bool, expected: str) -> list | None:
    """The row's paragraph list; None when it has none and none is required (a retriever supplies them)."""
    value = row.get(field)
    if value is None or value == []:
        if required:
            raise _Bad(field, "missing" if value is None else f"expected {expected}")
        return None
    if not isinstance(value, list):
        raise _Bad(field, f"expected {expected}")
    return value


def _parse_original(row: dict, passages_required: bool = True) -> dict:
    qid = _text(_need(row, "_id", "id"), "_id")
    question = _text(_need(row, "question"), "question")
    answers = _answers(_need(row, "answer"), "answer")
    facts = _need(row, "supporting_facts")
    if isinstance(facts, str):  # some 2Wiki copies store it as a Python literal
        try:
            facts = ast.literal_eval(facts)
        except (ValueError, SyntaxError):
            raise _Bad("supporting_facts", "a string that is not a list of [title, sentence index]") from None
    if not isinstance(facts, list) or not all(isinstance(f, list) and f and isinstance(f[0], str) for f in facts):
        raise _Bad("supporting_facts", "expected a list of [title, sentence index]")
    supporting = list(dict.fromkeys(f[0] for f in facts))
    context = _paragraph_list(row, "context", passages_required, "a non-empty list of [title, sentences]")
    if context is None:
        return dict(id=qid, question=question, answers=answers, passages=[], ranked=False, supporting_titles=supporting)
    passages = []
    for item in context:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise _Bad("context", "each entry must be [title, [sentences]]")
        passages.append(Passage(item[0], _sentences(item[1], "context"), is_gold=item[0] in supporting))
    if not any(p.is_gold for p in passages):
        raise _Bad("supporting_facts", "no supporting fact names a paragraph of the context (a paragraph list without gold)")
    facts = _evidence_facts(row.get("evidences"), passages)
    return dict(id=qid, question=question, answers=answers, passages=passages, ranked=False, supporting_titles=supporting, sub_questions=facts)


def _evidence_facts(triples, passages: list[Passage]) -> list[SubQuestion]:
    """2Wiki ``evidences``: each ``[subject, relation, object]`` whose subject titles a passage holding the object.
    The field is optional: a malformed one gives the row no facts (logged), never loses the row."""
    if isinstance(triples, str):
        try:
            triples = ast.literal_eval(triples)
        except (ValueError, SyntaxError):
            triples = None
    if triples is not None and not (isinstance(triples, list) and all(
            isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) for t in triples)):
        triples = None
    if triples is None:
        log.debug("evidences: not a list of [subject, relation, object]; the row gets no single-hop facts")
        return []
    by_title = {p.title: i for i, p in enumerate(passages)}
    out = []
    for triple in triples:
        subject, relation, obj = (x.strip() for x in triple)
        index = by_title.get(subject)
        if index is not None and passage_holds(passages[index], obj):
            out.append(SubQuestion(fact_question(subject, relation), obj, index))
    return out


def _parse_musique(row: dict, passages_required: bool = True) -> dict:
    if row.get("answerable") is False:
        raise _Bad("answerable", "unanswerable question (MuSiQue-Full): no gold answer to use")
    qid = _text(_need(row, "id", "_id"), "id")
    question = _text(_need(row, "question"), "question")
    answers = _answers([_need(row, "answer")] + _as_list(row.get("answer_aliases"), "answer_aliases"), "answer")
    paragraphs = _paragraph_list(row, "paragraphs", passages_required, "a non-empty list")
    if paragraphs is None:  # the decomposition names paragraphs by index only: no gold titles without them
        return dict(id=qid, question=question, answers=answers, passages=[], ranked=False)
    passages, titles_by_idx, position = [], {}, {}
    for i, p in enumerate(paragraphs):
        if not isinstance(p, dict):
            raise _Bad("paragraphs", "each paragraph must be an object")
        title = str(p.get("title") or "").strip()
        text = _text(_need(p, "paragraph_text", "text"), "paragraphs.paragraph_text")
        titles_by_idx[p.get("idx", i)] = title
        position.setdefault(p.get("idx", i), i)  # the decomposition names paragraphs by idx
        passages.append(Passage(title, text, is_gold=_flag(p.get("is_supporting"), "paragraphs.is_supporting")))
    if not any(p.is_gold for p in passages):
        raise _Bad("paragraphs.is_supporting", "no paragraph is marked supporting (a paragraph list without gold)")
    # Reasoning order from the decomposition (hop 1 first); paragraphs not named there keep list order.
    decomposition = [s for s in _as_list(row.get("question_decomposition"), "question_decomposition") if isinstance(s, dict)]
    steps = [s.get("paragraph_support_idx") for s in decomposition]
    supporting = [titles_by_idx[i] for i in steps if i in titles_by_idx]
    supporting += [p.title for p in passages if p.is_gold and p.title not in supporting]
    facts = _decomposition_facts(decomposition, passages, position)
    return dict(id=qid, question=question, answers=answers, passages=passages, ranked=False, supporting_titles=supporting, sub_questions=facts)


def _decomposition_facts(steps: list[dict], passages: list[Passage], position: dict) -> list[SubQuestion]:
    """MuSiQue hops as single-hop questions, ``#k`` replaced by hop k's answer."""
    answers: list[str] = []
    out = []
    for step in steps:
        answer = str(step.get("answer") or "").strip()
        text = str(step.get("question") or "").strip()
        answers.append(answer)
        index = position.get(step.get("paragraph_support_idx"))
        text = re.sub(r"#(\d+)", lambda m: answers[int(m.group(1)) - 1] if 0 < int(m.group(1)) <= len(answers) - 1 else m.group(0), text)
        if not answer or not text or index is None or "#" in text or not passage_holds(passages[index], answer):
            continue
        if " >> " in text:
            subject, _, relation = text.partition(" >> ")
            text = fact_question(subject.strip(), relation.strip())
        out.append(SubQuestion(text, answer, index))
    return out


def _parse_ircot(row: dict, passages_required: bool = True) -> dict:
    qid = _text(_need(row, "question_id"), "question_id")
    question = _text(_need(row, "question_text"), "question_text")
    objects = _need(row, "answers_objects")
    if not isinstance(objects, list):
        raise _Bad("answers_objects", "expected a list")
    spans: list = []
    for obj in objects:
        if isinstance(obj, dict):
            spans += _as_list(obj.get("spans"), "answers_objects.spans")
            if obj.get("number"):
                spans.append(str(obj["number"]))
    answers = _answers(spans, "answers_objects")
    contexts = _paragraph_list(row, "contexts", passages_required, "a non-empty list")
    if contexts is None:
        return dict(id=qid, question=question, answers=answers, passages=[], ranked=False)
    passages = []
    for c in contexts:
        if not isinstance(c, dict):
            raise _Bad("contexts", "each context must be an object")
        text = _text(_need(c, "paragraph_text", "text"), "contexts.paragraph_text")
        passages.append(Passage(str(c.get("title") or "").strip(), text, is_gold=_flag(c.get("is_supporting"), "contexts.is_supporting")))
    if not any(p.is_gold for p in passages):
        raise _Bad("contexts.is_supporting", "no context is marked supporting (a paragraph list without gold)")
    supporting = list(dict.fromkeys(p.title for p in passages if p.is_gold))
    return dict(id=qid, question=question, answers=answers, passages=passages, ranked=False, supporting_titles=supporting)


def _parse_gold_evidence(row: dict, passages_required: bool = True) -> dict:
    question = _text(_need(row, "question"), "question")
    answers = _answers(_need(row, "answer"), "answer")
    evidence = _paragraph_list(row, "evidence", passages_required, "a non-empty list of paragraph strings")
    passages = [Passage("", _text(e, "evidence"), is_gold=True) for e in evidence or []]
    return dict(id=_row_id(row, question, "id", "_id"), question=question, answers=answers, passages=passages, ranked=False)


def _row_id(row: dict, question: str, *fields: str) -> str:
    """The first of ``fields`` the row gives, else an id made from the question (the same question, the same id)."""
    qid = next((row[f] for f in fields if row.get(f) not in (None, "")), None)
    return str(qid) if qid is not None else "q-" + hashlib.sha1(question.encode()).hexdigest()[:12]


def _parse_sources(row: dict, passages_required: bool = True) -> dict:
    question = _text(_need(row, "question"), "question")
    answers = _answers(_need(row, "answer"), "answer")
    qid = _row_id(row, question, "id", "_id", "dataset_index")
    sources = _paragraph_list(row, "sources", passages_required, "a non-empty list of {title, text, is_gold}")
    if sources is None:
        return dict(id=qid, question=question, answers=answers, passages=[], ranked=False)
    passages = []
    for s in sources:
        if not isinstance(s, dict):
            raise _Bad("sources", "each source must be an object {title, text, is_gold}")
        title = _text(_need(s, "title"), "sources.title")
        passages.append(Passage(title, _sentences(_need(s, "text"), "sources.text"), is_gold=_flag(s.get("is_gold"), "sources.is_gold")))
    pairs = _as_list(_need(row, "gold_source_indices"), "gold_source_indices")
    order = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
                and 0 <= pair[0] < len(sources)):
            raise _Bad("gold_source_indices", f"expected [source index, sentence index] pairs within the {len(sources)} sources, got {pair!r:.40}")
        text = sources[pair[0]].get("text")
        if isinstance(text, list) and not 0 <= pair[1] < len(text):
            raise _Bad("gold_source_indices", f"{pair}: source {pair[0]} has {len(text)} sentences")
        order.append(pair[0])
    named = set(order)
    flagged = {i for i, p in enumerate(passages) if p.is_gold}
    if not flagged:
        raise _Bad("sources.is_gold", "no source is flagged gold (a paragraph list without gold)")
    if named != flagged:
        raise _Bad("gold_source_indices", f"names sources {sorted(named)} but sources {sorted(flagged)} are flagged is_gold; make them agree")
    supporting = list(dict.fromkeys(passages[i].title for i in order))
    return dict(id=qid, question=question, answers=answers, passages=passages, ranked=False, supporting_titles=supporting)


def _parse_choices(row: dict) -> tuple[list[str], str, str]:
    choices = row["choices"]
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list) or not choices["text"]:
        raise _Bad("choices", "expected {text: [...], label: [...]}")
    texts = [str(t).strip() for t in choices["text"]]
    given = choices.get("label")
    if given is not None and not isinstance(given, list):
        raise _Bad("choices", f"choices.label: expected a list of labels, got {type(given).__name__}")
    labels = [str(x).strip() for x in given or []] or [chr(65 + i) for i in range(len(texts))]
    if len(labels) != len(texts):
        raise _Bad("choices", f"{len(labels)} labels for {len(texts)} texts; give one label per choice text (or no labels: A, B, C, ...)")
    key = _text(_need(row, "answerKey", "answer_key"), "answerKey")
    if key not in labels:
        raise _Bad("answerKey", f"{key!r} is not one of the choice labels {labels}")
    index = labels.index(key)
    return texts, chr(65 + index), texts[index]


def _parse_retrieved(row: dict, line: int, dataset: str) -> dict:
    question = _text(_need(row, "question", "instruction"), "question")
    qid = row.get("id", row.get("_id", row.get("question_id")))
    qid = str(qid) if qid is not None and str(qid).strip() else f"{dataset}-{line}"
    choices = answer_key = None
    if "choices" in row:
        choices, answer_key, correct = _parse_choices(row)
        answers = [answer_key, correct]
    else:
        answers = _answers(_need(row, "answers", "answer", "golds", "output"), "answers")
    raw = row.get("ctxs", row.get("top_contexts")) or []
    if not isinstance(raw, list):
        raise _Bad("ctxs", "expected a list of passages")
    passages = []
    for c in raw:
        if isinstance(c, str):
            passages.append(Passage("", c.strip()))
            continue
        if not isinstance(c, dict):
            raise _Bad("ctxs", "each passage must be an object or a string")
        text = str(_need(c, "text", "paragraph_text", "content")).strip()
        if not text:  # retrieved lists hold a few empty pages (PopQA's category pages): not evidence
            continue
        key = next((k for k in ("is_gold", "is_supporting", "hasanswer", "has_answer") if k in c), None)
        gold = None if key is None or c[key] is None else _flag(c[key], f"ctxs.{key}")
        score = c.get("score")
        try:
            score = float(score) if score is not None else None
        except (TypeError, ValueError):
            raise _Bad("ctxs.score", f"not a number: {score!r}") from None
        passages.append(Passage(str(c.get("title") or "").strip(), text, score=score, is_gold=gold))
    return dict(id=qid, question=question, answers=answers, passages=passages, ranked=True, choices=choices, answer_key=answer_key)


# ------------------------------------------------------------------------------------------- reading


def window(rows, skip: int, limit: int | None, errors: ErrorLog):
    """The ``(line, row)`` pairs of rows ``skip .. skip + limit``; unreadable rows there go to ``errors``."""
    for index, (line, row) in enumerate(rows):
        if index < skip:
            continue
        if limit is not None and index >= skip + limit:
            break
        if isinstance(row, RowError):
            errors.report(row)
            continue
        yield line, row


def read_examples(
    path_or_name: str | Path,
    task: str | None = None,
    limit: int | None = None,
    strict: bool = False,
    *,
    skip: int = 0,
    errors: ErrorLog | None = None,
    dataset: str | None = None,
    passages_required: bool = True,
) -> Iterator[QAExample]:
    """Every good row of a QA file or hub dataset as a :class:`QAExample`.

    ``task`` is the hub config (``hotpotqa``...) and, for local files, the dataset name when given.
    ``skip``/``limit`` (or a ``:skip=N:limit=M`` suffix) select a window of raw rows. A bad row is
    reported to ``errors`` (logged and counted) and skipped; ``strict`` raises it instead. With
    ``passages_required=False`` a row of a paragraph-list format without its paragraphs is read with none.
    """
    errors = errors if errors is not None else ErrorLog(strict=strict)
    errors.strict = errors.strict or strict
    name, skip_suffix, limit_suffix = split_window(path_or_name)
    skip += skip_suffix
    limit = limit if limit is not None else limit_suffix
    source, rows = iter_rows(name, task)
    fmt = ds = None
    for line, row in window(rows, skip, limit, errors):
        if fmt is None:
            if not isinstance(row, dict):
                errors.report(RowError(source, line, "row", f"expected a JSON object, got {type(row).__name__}"))
                continue
            fmt = detect_format(row)
            ds = dataset or task or guess_dataset(source, fmt, row)
        try:
            if not isinstance(row, dict):
                raise _Bad("row", f"expected a JSON object, got {type(row).__name__}")
            if fmt == "retrieved":
                fields = _parse_retrieved(row, line, ds)
            else:
                parse = {"original": _parse_original, "musique": _parse_musique, "ircot": _parse_ircot, "gold_evidence": _parse_gold_evidence,
                         "sources": _parse_sources}[fmt]
                fields = parse(row, passages_required)
        except _Bad as bad:
            errors.report(RowError(source, line, bad.field, bad.message))
            continue
        yield QAExample(dataset=ds, source=f"{source}:{line}", **fields)
