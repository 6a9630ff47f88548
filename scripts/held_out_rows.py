"""The source rows of a data build's held-out questions, written as files ``openrag eval`` reads.

    python scripts/held_out_rows.py runs/v4/train.held_out.jsonl ../shared/data/hotpotqa/hotpotqa_train100.json ... \
        --output_dir runs/heldout

``openrag data build --held_out N`` keeps N questions out of the training data and writes their instances (the
trainer's held-out check reads them: loss and reflection tokens). This finds the same questions again in the build's
input files, by question text, and writes each input's rows as JSON lines (``OUTPUT_DIR/<input name>.jsonl``), so that
answering (the candidates, the choice among them, EM) can be measured on questions of the training distribution that
the run never trained on: the place to tune inference settings without touching evaluation rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openrag.data.readers import RowError, iter_rows


def held_out_questions(path: Path) -> set[str]:
    """The questions of a build's held-out instances (each instance's first user turn)."""
    questions = set()
    for line, row in iter_rows(path)[1]:
        if isinstance(row, RowError):
            sys.exit(f"held_out_rows: {row}")
        try:
            questions.add(row["conversation"][0]["input"].strip())
        except (KeyError, IndexError, TypeError):
            sys.exit(f"held_out_rows: {path} line {line} is not a training instance (no conversation[0].input); "
                     "give the .held_out.jsonl that `openrag data build --held_out N` wrote")
    return questions


def question_of(row: dict) -> str:
    """A QA row's question, under the field names of the formats the build reads (IRCoT's ``question_text``)."""
    return str(row.get("question") or row.get("question_text") or "").strip()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("held_out", type=Path, help="the build's .held_out.jsonl")
    ap.add_argument("inputs", type=Path, nargs="+", help="the build's input files (QA rows in any format the build reads)")
    ap.add_argument("--output_dir", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        wanted = held_out_questions(args.held_out)
        matched = {path: [row for _, row in iter_rows(path)[1] if isinstance(row, dict) and question_of(row) in wanted]
                   for path in args.inputs}
    except (OSError, ValueError) as err:
        sys.exit(f"held_out_rows: {err}")
    if len({path.stem for path in args.inputs}) < len(args.inputs):
        sys.exit("held_out_rows: two inputs share a file name, and so would their outputs; give each input once")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    found = set()
    for path, rows in matched.items():
        found.update(question_of(row) for row in rows)
        if rows:
            out = args.output_dir / f"{path.stem}.jsonl"
            out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
            print(f"{out}: {len(rows)} rows")
    print(f"{len(found)} held-out questions found ({len(wanted)} distinct instance inputs: fact instances ask sub-questions, "
          "which no input row holds)")


if __name__ == "__main__":
    main()
