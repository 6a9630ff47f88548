"""The evaluation loop: answer each question once, append its JSON line at once, summarise from the lines.

Files. ``--output_file X.jsonl`` receives one JSON object per answered question, flushed as soon as it is
written, so a killed run keeps everything it answered; the summary goes to ``X.metrics.json``. The summary
is a pure function of the lines (plus the run's settings), so a resumed run and an uninterrupted one give
the same metrics, and shards combine exactly.

Index. With ``--index`` a question may be answered from an ``openrag index`` folder instead of its row's
passages: ``--passages from_data`` (default) searches only for rows that carry no passages, ``from_index`` for
every row. Its passages are ``None`` here; the answerer searches (its query may need the model's no-retrieval
answer) and returns what it asked (``query``) and what came back (``retrieved_passages``). Its JSON line then
holds ``retrieval_recall@K``: the share of the row's gold titles among the K titles retrieved (None when the data
names no gold title), averaged over the rows that have one into the summary's ``retrieval_recall@K``.

Resume. ``--resume`` reads the lines already in the file (dropping a last line cut off by a kill), checks
that they belong to the same data (index and id of each question) and were made with the same settings (the
metrics file, written when a run starts and again when it ends, records them), and answers only the rest.
Without ``--resume`` a file that holds answers is replaced only with ``--overwrite``.

Shards. With ``--world_size N --rank R`` (or torchrun's ``WORLD_SIZE``/``RANK``), rank R answers the
questions whose dataset index i (after ``--limit``) has ``i % N == R``: interleaved, so long and short
questions spread evenly over ranks. Each rank writes ``X.rank{R}-of-{N}.jsonl`` and its own metrics file;
the rank that finishes last finds every shard complete and writes the combined ``X.jsonl`` in dataset order
and ``X.metrics.json`` (``openrag eval combine`` does the same by hand).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..jsonfiles import read_json_object
from ..outputs import write_json, write_jsonl
from ..retrieval.metrics import retrieval_recall_at_k
from .critique import relevance_metrics, retrieval_need_auc
from .metrics import HEADLINE, SCORES, score_answer
from .passages import make_ranker, select_passages
from .request import EvalRequest


@dataclass
class Question:
    """One dataset row as the loop sees it: its index in the dataset and the passages it is answered with."""

    index: int
    example: Any  # openrag.data.readers.QAExample
    passages: list | None  # None: the answerer retrieves them from the index
    ranked_by: str
    gold_recall: float | None


# Answers a batch of questions; returns per question a dict with at least ``prediction`` and ``retrieved``
# (anything else, e.g. ``candidates``, is kept in the JSON line as it is).
Answerer = Callable[[Sequence[Question]], list[dict]]


def metrics_path(jsonl: Path) -> Path:
    jsonl = Path(jsonl)
    return jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".metrics.json")


def shard_path(output_file: Path, rank: int, world_size: int) -> Path:
    output_file = Path(output_file)
    if world_size == 1:
        return output_file
    return output_file.with_name(f"{output_file.name.removesuffix('.jsonl')}.rank{rank}-of-{world_size}.jsonl")


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """The JSON lines of an output file. A last line without its newline (a kill in mid-write) is
    dropped, and with ``repair`` cut from the file so that appending continues cleanly."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(complete)
    records = []
    for number, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not a JSON line ({err}); remove it or start without --resume") from None
    return records


def summarize(records: Sequence[dict], metric: str) -> dict:
    """Means of every per-question metric, retrieval frequency, gold recall, and speed."""
    n = len(records)
    summary: dict[str, Any] = {"n": n}
    keys = list(records[0]["metrics"]) if records else list(score_answer(metric, "", ["x"]))
    for key in keys:
        summary[key] = sum(r["metrics"][key] for r in records) / n if n else 0.0
    summary["retrieval_frequency"] = sum(bool(r["retrieved"]) for r in records) / n if n else 0.0
    recalls = [r["gold_recall"] for r in records if r.get("gold_recall") is not None]
    summary["gold_recall"] = sum(recalls) / len(recalls) if recalls else None
    summary["gold_recall_n"] = len(recalls)
    for key in dict.fromkeys(k for r in records for k in r if k.startswith("retrieval_recall@")):
        values = [r[key] for r in records if r.get(key) is not None]
        summary[key] = sum(values) / len(values) if values else None
        summary["retrieval_recall_n"] = len(values)
    summary.update(relevance_metrics(records))
    if records and all("no_retrieval" in r for r in records):
        summary.update(retrieval_need_auc(records, HEADLINE[metric]))
    seconds = sum(r.get("seconds", 0.0) for r in records)
    summary["seconds"] = seconds
    summary["questions_per_second"] = n / seconds if seconds > 0 else None
    return summary


def prepare_questions(examples: Iterable, config: EvalRequest) -> list[Question]:
    """The questions of this shard, with their passages selected (unranked candidates ranked first)."""
    ranker = make_ranker(config.ranker, config.device)
    questions = []
    for index, example in enumerate(examples):
        if config.limit is not None and index >= config.limit:
            break
        if index % config.world_size != config.rank:
            continue
        if config.index is not None and (config.passages == "from_index" or not example.passages):
            questions.append(Question(index, example, None, "index", None))
            continue
        sel = select_passages(example.question, list(example.passages), example.ranked, config.ndocs, ranker)
        questions.append(Question(index, example, sel.passages, sel.ranked_by, sel.gold_recall))
    return questions


def gold_titles(example) -> list[str]:
    """The titles of a row's gold evidence: its supporting titles, else its gold-flagged passages' titles."""
    return list(example.supporting_titles or []) or [p.title for p in example.passages if p.is_gold]


def make_record(question: Question, answer: dict, config: EvalRequest, seconds: float) -> dict:
    ex = question.example
    prediction = answer["prediction"]
    choices = list(ex.choices) if getattr(ex, "choices", None) else None
    labels = [chr(ord("A") + i) for i in range(len(choices))] if choices else None
    answers = [ex.answer_key] if config.metric == "accuracy" and getattr(ex, "answer_key", None) else list(ex.answers)
    record = {
        "index": question.index,
        "id": ex.id,
        "question": ex.question,
        "answers": list(ex.answers),
        "prediction": prediction,
        "retrieved": bool(answer["retrieved"]),
        "metrics": score_answer(config.metric, prediction, answers, labels, choices),
        "ranked_by": question.ranked_by,
        "gold_recall": question.gold_recall,
        "seconds": seconds,
    }
    if labels:
        record["answer_key"] = ex.answer_key
    if question.passages is None and answer.get("query") is not None:  # searched the index
        gold = gold_titles(ex)
        titles = [p["title"] for p in answer.get("retrieved_passages", [])]
        record[config.recall_key] = retrieval_recall_at_k(titles, gold) if gold else None
    alternative = answer.get("no_retrieval")  # the sweep's second answer: scored the same way
    if alternative is not None:
        scored = score_answer(config.metric, alternative["prediction"], answers, labels, choices)
        record["no_retrieval"] = {**alternative, "metrics": scored}
    record.update({k: v for k, v in answer.items() if k not in record})
    return record


def _check_resumed(records: list[dict], questions: list[Question], path: Path) -> None:
    expected = {q.index: str(q.example.id) for q in questions}
    for r in records:
        if expected.get(r.get("index")) != str(r.get("id")):
            raise ValueError(
                f"{path} holds an answer (index {r.get('index')}, id {r.get('id')!r}) that is not a question of this "
                "run's data and shard; resume with the same --dataset/--task/--limit/--world_size/--rank, or use another --output_file"
            )


# The summary fields that say how its answers were made and scored; a resumed run must agree on all of them.
# Those known before the model is loaded are checked then; the rest (a checkpoint's prompt format, the defaults
# of options not given) once it is. Not here: batch sizes (they group the work), limit/world_size/rank (the
# questions themselves are checked), timings.
SETTINGS_BEFORE_LOADING = ("task", "metric", "model", "dataset", "dataset_fingerprint", "baseline", "backend", "ndocs", "ranker", "index", "passages")


def resume_keys() -> dict:
    """Each field a resume compares, with the value its absence stands for: None, or for an answering option eval's
    default (a summary written before the option was recorded was answered as eval's default answers: its own
    COMMANDS["eval"] defaults, e.g. w_rel 1, over AnswerOptions')."""
    from dataclasses import fields

    from ..answer.options import COMMANDS, default_of, AnswerOptions

    keys = dict.fromkeys([*SETTINGS_BEFORE_LOADING, "instruction", "chat_template"])
    keys.update({f.name: COMMANDS["eval"].defaults.get(f.name, default_of(f.name)) for f in fields(AnswerOptions)
                 if f.name not in keys and f.name != "batch_size"})
    keys["dtype"] = "float32"  # answers in another dtype are other answers; summaries before it was recorded: the CPU's float32
    return keys


def run_settings(config: EvalRequest) -> dict:
    """What the summary records about how the run answers (see :func:`_summary`)."""
    settings = {"task": config.task, "metric": config.metric, "ndocs": config.ndocs, "ranker": config.ranker}
    if config.index is not None:
        settings.update(index=config.index, passages=config.passages)
    return {**settings, **config.settings}


def check_output(config: EvalRequest, loaded: bool = True) -> None:
    """Before writing this shard's file: refuse to replace the answers in it unless ``overwrite``, and to add to
    answers made with other settings (``loaded``: all settings are known; else only SETTINGS_BEFORE_LOADING)."""
    path = shard_path(config.output_file, config.rank, config.world_size)
    if not (path.is_file() and path.stat().st_size):
        return
    if config.overwrite:
        return
    if not config.resume:
        n = path.read_bytes().count(b"\n")
        raise ValueError(f"{path} already holds {n} answers; pass --resume to keep them and answer the rest, "
                         "--overwrite to replace them, or another --output_file")
    mpath = metrics_path(path)
    try:
        stored = json.loads(mpath.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        raise ValueError(f"cannot resume {path}: {mpath} (which records the settings its answers were made with) is "
                         "missing or unreadable; pass --overwrite to start again, or use another --output_file") from None
    current = run_settings(config)
    keys = resume_keys() if loaded else dict.fromkeys(SETTINGS_BEFORE_LOADING)
    differ = [f"{k}: {stored.get(k, absent)!r} there, {current.get(k, absent)!r} now" for k, absent in keys.items()
              if (k in stored or k in current) and stored.get(k, absent) != current.get(k, absent)]
    if differ:
        raise ValueError(f"cannot resume {path}: its answers were made with other settings ({'; '.join(differ)}); "
                         "resume with the same settings, pass --overwrite to start again, or use another --output_file")


def run_shard(config: EvalRequest, questions: list[Question], answerer: Answerer, load_seconds: float = 0.0, skipped: dict[str, int] | None = None) -> dict:
    """Answer this shard's questions not yet in its file; write its metrics file; return its summary."""
    path = shard_path(config.output_file, config.rank, config.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_output(config)
    done: list[dict] = []
    if config.resume:
        done = read_records(path, repair=True)
        _check_resumed(done, questions, path)
        done.sort(key=lambda r: r["index"])
    elif path.exists() and path.stat().st_size:
        print(f"openrag eval: overwriting {path} (--overwrite)", file=sys.stderr)
    # Written first: the settings the answers below are made with (a resume checks them), and no stale summary.
    write_json(metrics_path(path), _summary(done, config, load_seconds, skipped or {}, complete=False))
    answered = {r["index"] for r in done}
    todo = [q for q in questions if q.index not in answered]
    headline = HEADLINE[config.metric]
    running = [sum(r["metrics"][headline] for r in done), len(done)]
    bar = _progress(config, total=len(questions), initial=len(done))
    with open(path, "a" if config.resume else "w", encoding="utf-8") as out:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            t0 = time.perf_counter()
            answers = answerer(batch)
            each = (time.perf_counter() - t0) / len(batch)
            for question, answer in zip(batch, answers, strict=True):
                record = make_record(question, answer, config, each)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                done.append(record)
                running[0] += record["metrics"][headline]
                running[1] += 1
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix({headline: f"{100 * running[0] / running[1]:.1f}"})
    if bar is not None:
        bar.close()
    done.sort(key=lambda r: r["index"])
    summary = _summary(done, config, load_seconds, skipped or {}, complete=len(done) == len(questions))
    write_json(metrics_path(path), summary)
    return summary


def _summary(records: list[dict], config: EvalRequest, load_seconds: float, skipped: dict[str, int], complete: bool) -> dict:
    """``skipped``: bad input rows per field at fault (each rank reads, and counts, the whole dataset)."""
    summary = {"task": config.task, "metric": config.metric, **summarize(records, config.metric)}
    summary.update(load_seconds=load_seconds, skipped=sum(skipped.values()), skipped_by_field=dict(skipped))
    summary.update(ndocs=config.ndocs, ranker=config.ranker)
    if config.index is not None:
        summary.setdefault(config.recall_key, None)
        summary.setdefault("retrieval_recall_n", 0)
        summary.update(index=config.index, passages=config.passages)
    summary.update(limit=config.limit, world_size=config.world_size, complete=complete)
    summary.update(config.settings)
    return summary


def combine_shards(output_file: Path, world_size: int) -> dict | None:
    """Merge complete shards into ``output_file`` and its metrics file; None while a shard is unfinished."""
    summaries, records = [], []
    for rank in range(world_size):
        path = shard_path(output_file, rank, world_size)
        mpath = metrics_path(path)
        if not mpath.exists():
            return None
        summary = read_json_object(mpath, f"rerun shard {rank} of {world_size} with --resume")
        if not summary.get("complete"):
            return None
        summaries.append(summary)
        records.extend(read_records(path))
    records.sort(key=lambda r: r["index"])
    indices = [r["index"] for r in records]
    if len(set(indices)) != len(indices):
        raise ValueError(f"the shards of {output_file} answer some question twice; were they run with different settings?")
    first = summaries[0]
    combined = {"task": first["task"], "metric": first["metric"], **summarize(records, first["metric"])}
    for key, value in first.items():
        combined.setdefault(key, value)
    combined["load_seconds"] = max(s["load_seconds"] for s in summaries)
    combined["wall_seconds"] = max(s["seconds"] for s in summaries)  # the ranks run side by side
    combined["throughput"] = len(records) / combined["wall_seconds"] if combined["wall_seconds"] > 0 else None
    combined["complete"] = True
    write_jsonl(output_file, records)
    write_json(metrics_path(output_file), combined)
    return combined


def _progress(config: EvalRequest, total: int, initial: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    desc = config.task if config.world_size == 1 else f"{config.task} rank {config.rank}/{config.world_size}"
    return tqdm(total=total, initial=initial, desc=desc, unit="q", dynamic_ncols=True)


def format_summary(summary: dict) -> str:
    """One readable line: the headline numbers as percentages, then speed."""
    keys = [k for k in SCORES if k in summary]
    parts = [f"{k} {100 * summary[k]:.1f}" for k in keys]
    parts.append(f"retrieval {100 * summary['retrieval_frequency']:.1f}%")
    if summary.get("gold_recall") is not None:
        parts.append(f"gold recall@{summary.get('ndocs')} {100 * summary['gold_recall']:.1f}")
    if summary.get("relevance_accuracy") is not None:
        parts.append(f"relevance accuracy {100 * summary['relevance_accuracy']:.1f} ({summary['relevance_n']} passages)")
    for key, name in (("relevance_balanced_accuracy", "balanced"), ("relevance_auc", "relevance AUC"), ("retrieval_need_auc", "retrieval-need AUC")):
        if summary.get(key) is not None:
            parts.append(f"{name} {summary[key]:.3f}" if key.endswith("auc") else f"{name} {100 * summary[key]:.1f}")
    for key in (k for k in summary if k.startswith("retrieval_recall@") and summary[k] is not None):
        parts.append(f"{key.replace('_', ' ')} {100 * summary[key]:.1f}")
    qps = summary.get("questions_per_second")
    parts.append(f"{summary['n']} questions in {summary['seconds']:.1f}s" + (f" ({qps:.2f} q/s)" if qps else ""))
    if summary.get("skipped"):
        parts.append(f"{summary['skipped']} rows skipped")
    return f"{summary['task']}: " + ", ".join(parts)
