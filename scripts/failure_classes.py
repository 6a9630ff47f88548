"""Wrong answers to questions whose answer was in a shown passage, sorted into classes and counted (issue 28).

    python scripts/failure_classes.py runs/eval_fail/hotpotqa.always.jsonl --json failures.json

Reads ``openrag eval`` output files (JSON lines; each record keeps the question, its gold ``answers``, the chosen
``prediction`` and one candidate per shown passage: its ``passage``, its answer ``text`` and its ``score``). When the
answer was shown and still missed, the reader, not the retriever, failed; the class says which part of the reader
to work on. Two rules of :mod:`openrag.normalize`, each for its own use:

- *right*: a text is right when it exactly matches some gold answer under the scoring rule (EM,
  :func:`openrag.eval.metrics.exact_match`, aliases included);
- *contains*: a text contains a string when it occurs there as whole words under the finding rule
  (:func:`openrag.normalize.contains_answer`, as the training labels find answers). A passage is its title and
  text together.

Population: questions whose prediction is not right (the record's ``metrics.em_any`` is 0) while some shown
passage contains a gold answer. The chosen
candidate is the highest-scored one whose text is the prediction. Classes, the first that matches wins:

1. ``chosen over a right candidate``: another candidate's text is right; the candidate score chose wrong.
2. ``the other compared option``: the question names a gold answer and the prediction too (a comparison such as
   "Which film came out first, A or B?"), and the model picked the wrong option. Without this class these would
   count as bridge entities (the wrong option is a shown passage's title), which they are not.
3. ``bridge entity``: the prediction names a step on the way instead of the answer: it equals (finding rule) the
   title of a shown passage (typically the bridge's own page, which holds the answer), or the question contains it
   (the entity the question starts from, or words repeated from it); and it shares no content word
   (:func:`openrag.data.labels.content_words`) with a gold answer, which would make it a part or an alias of the
   answer ("Lee Hazlewood" for "Barton Lee Hazlewood"), not another entity.
4. ``answer from the wrong passage``: the chosen candidate's passage contains no gold answer (another shown one
   does) and contains the prediction: a span read faithfully from a passage that cannot answer.
5. ``wrong span``: the chosen candidate's passage contains a gold answer and the prediction, a different span.
6. ``not in any shown passage``: no shown passage contains the prediction (made up, reworded or repeated text).
7. ``other``: what is left, which is a prediction that some other shown passage contains while its own does not:
   the candidate read across passages.

Records without candidates (answered without retrieval) are left out. Also per file: the candidate upper bound,
the questions (of all) with a right candidate anywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openrag.data.labels import content_words
from openrag.eval.metrics import exact_match
from openrag.eval.runner import read_records
from openrag.normalize import contains_answer, normalize_text

CLASSES = (
    "chosen over a right candidate",
    "the other compared option",
    "bridge entity",
    "answer from the wrong passage",
    "wrong span",
    "not in any shown passage",
    "other",
)
EXAMPLES = 3


def right(text: str, answers: list[str]) -> bool:
    return any(exact_match(text, a) for a in answers)


def passage_text(candidate: dict) -> str:
    passage = candidate["passage"]
    return f"{passage.get('title', '')} {passage['text']}"


def holds(candidate: dict, answers: list[str]) -> bool:
    """Whether the candidate's passage contains one of ``answers`` (the finding rule)."""
    return contains_answer(passage_text(candidate), answers)


def chosen(record: dict) -> dict:
    return max((c for c in record["candidates"] if c["text"] == record["prediction"]), key=lambda c: c["score"])


def in_population(record: dict) -> bool:
    answers = record["answers"]
    return not right(record["prediction"], answers) and any(holds(c, answers) for c in record["candidates"])


def names_a_bridge(record: dict) -> bool:
    prediction, answers = record["prediction"], record["answers"]
    if content_words(prediction) & set().union(*(content_words(a) for a in answers)):
        return False  # a part or an alias of the answer, not another entity
    titles = {normalize_text(c["passage"].get("title", "")) for c in record["candidates"]}
    return normalize_text(prediction) in titles or contains_answer(record["question"], [prediction])


def failure_class(record: dict) -> str:
    """The class of a wrong answer of the population (the module docstring defines each)."""
    answers, prediction, candidates = record["answers"], record["prediction"], record["candidates"]
    own = chosen(record)
    if any(right(c["text"], answers) for c in candidates):
        return "chosen over a right candidate"
    if contains_answer(record["question"], answers) and contains_answer(record["question"], [prediction]):
        return "the other compared option"
    if names_a_bridge(record):
        return "bridge entity"
    if holds(own, [prediction]):
        return "wrong span" if holds(own, answers) else "answer from the wrong passage"
    if not any(holds(c, [prediction]) for c in candidates):
        return "not in any shown passage"
    return "other"


def example(record: dict) -> dict:
    return {"question": record["question"], "gold": record["answers"], "prediction": record["prediction"],
            "passage": chosen(record)["passage"].get("title", "")}


def summary(records: list[dict]) -> dict:
    """Counts, shares (of the population) and up to EXAMPLES examples per class, and the candidate upper bound."""
    population = [r for r in records if in_population(r)]
    classes = {name: {"count": 0, "share": 0.0, "examples": []} for name in CLASSES}
    for record in population:
        entry = classes[failure_class(record)]
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append(example(record))
    for entry in classes.values():
        entry["share"] = entry["count"] / len(population) if population else 0.0
    upper = sum(any(right(c["text"], r["answers"]) for c in r["candidates"]) for r in records)
    return {"questions": len(records), "population": len(population), "right_candidate": upper, "classes": classes}


def table(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    width = max(len(c) for c in CLASSES)
    head = f"{'':{width}}" + "".join(f"  {Path(n).name.split('.')[0]:>16}" for n in names)
    rows = [head]
    for label, key in (("questions", "questions"), ("right candidate anywhere", "right_candidate"),
                       ("population", "population")):
        rows.append(f"{label:{width}}" + "".join(f"  {summaries[n][key]:>16}" for n in names))
    for c in CLASSES:
        cells = (summaries[n]["classes"][c] for n in names)
        rows.append(f"{c:{width}}" + "".join(f"  {e['count']:>8} ({100 * e['share']:3.0f}%)" for e in cells))
    return "\n".join(rows)


def examples(summaries: dict[str, dict]) -> str:
    lines = []
    for name, s in summaries.items():
        for c in CLASSES:
            for e in s["classes"][c]["examples"]:
                lines.append(f"{Path(name).name} | {c} | {e['question']} | gold {e['gold']} | "
                             f"predicted {e['prediction']!r} from {e['passage']!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="openrag eval output files (.jsonl)")
    parser.add_argument("--json", type=Path, help="write the counts, shares and examples here")
    args = parser.parse_args(argv)
    summaries = {}
    for path in args.files:
        if not path.is_file():
            parser.error(f"no file at {path}")
        summaries[str(path)] = summary([r for r in read_records(path) if r.get("candidates")])
    print(table(summaries))
    print()
    print(examples(summaries))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
