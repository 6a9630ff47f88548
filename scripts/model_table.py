"""MODEL.md's tables from the held-out runs of scripts/eval_bundled.sh.

    python scripts/model_table.py --openrag "bundled=runs/eval_moe" --openrag "dense LoRA=runs/eval_lora" --base runs/eval_base

Each --openrag folder holds TASK.sweep.jsonl (an Open-RAG model: KIND=sweep); the --base folder holds
TASK.standard_rag.jsonl and TASK.closed_book.jsonl (KIND=standard_rag / closed_book), and optionally
TASK.standard_rag_short.jsonl (the same with a short instruction); a missing file shows as "-". Adaptive retrieval's threshold is chosen by
two-fold cross-validation over the held-out questions: the threshold that scores best (EM, then F1, then
less retrieval) on one half is applied to the other half, and the two halves are pooled, so no question is
answered with a threshold picked on itself.

Reflection-token quality, one row per model and dataset (openrag.eval.critique):
* relevance over every passage shown with a gold flag: accuracy and balanced accuracy of
  P([Relevant]) share > 0.5 against the flag, and the AUC of the share;
* retrieval = label: how often the token rule at its default threshold (P([Retrieval]) share > 0.5) agrees
  with the training labels (retrieve unless the question is closed-class, openrag.data.labels);
* retrieval-need AUC: P([Retrieval]) share against "the no-retrieval answer is wrong" (EM 0);
* the token rule at its default threshold, 0.5 (no threshold chosen on any question), beside always retrieving.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openrag.answer.scoring import decide, get_rule
from openrag.data.examples import QAExample
from openrag.data.labels import needs_retrieval
from openrag.eval.critique import relevance_metrics, retrieval_need_auc
from openrag.eval.runner import read_records
from openrag.eval.sweep import DEFAULT_THRESHOLDS, sweep, sweep_point

TASKS = (("hotpotqa", "HotpotQA"), ("musique", "MuSiQue"), ("2wikimultihopqa", "2Wiki"))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def scores(records, use_retrieval) -> tuple[float, float, float]:
    """(EM, F1, retrieval share) when question r is answered with retrieval iff use_retrieval(r)."""
    point = sweep_point("", None, records, use_retrieval)
    return point.metrics["em"], point.metrics["f1"], point.retrieval_frequency


def best_threshold(records, rule: str) -> float:
    points = [p for p in sweep(records, [rule], DEFAULT_THRESHOLDS) if p.rule == rule]
    best = max(points, key=lambda p: (p.metrics["em"], p.metrics["f1"], -p.retrieval_frequency))
    return best.threshold


def cross_validated(records, rule: str) -> tuple[float, float, float, list[float]]:
    """Two folds (first and second half by dataset index): each half uses the other half's best threshold."""
    records = sorted(records, key=lambda r: r["index"])
    half = len(records) // 2
    folds = [records[:half], records[half:]]
    decisions, thresholds = {}, []
    for k, fold in enumerate(folds):
        t = best_threshold(folds[1 - k], rule)
        thresholds.append(t)
        for r in fold:
            decisions[r["index"]] = decide(rule, r["no_retrieval"].get(get_rule(rule).signal), t)
    em, f1, freq = scores(records, lambda r: decisions[r["index"]])
    return em, f1, freq, thresholds


def label_agreement(records) -> float:
    """Share of questions where the token rule at 0.5 retrieves exactly when the training labels say to."""
    def labelled(r):
        return needs_retrieval(QAExample(str(r["id"]), r["question"], r["answers"], [], False, "", ""))

    return mean(float(decide("token", r["no_retrieval"].get("p_retrieve"), 0.5) == labelled(r)) for r in records)


def cell(em: float, f1: float, freq: float | None = None) -> str:
    text = f"{100 * em:.1f} / {100 * f1:.1f}"
    return text if freq is None else f"{text} ({100 * freq:.0f}%)"


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def openrag_rows(name: str, folder: Path) -> tuple[list[list[str]], list[list[str]]]:
    rows = {key: [f"{name}, {label}"] for key, label in (
        ("no", "no_retrieval"), ("always", "always_retrieve"), ("token", "adaptive, token rule"),
        ("minp", "adaptive, minp rule"), ("meanp", "adaptive, meanp rule"))}
    quality = []
    for task, label in TASKS:
        path = folder / f"{task}.sweep.jsonl"
        records = read_records(path) if path.exists() else []
        if not records:
            for row in rows.values():
                row.append("-")
            continue
        rows["no"].append(cell(*scores(records, lambda r: False)))
        rows["always"].append(cell(*scores(records, lambda r: True)))
        for rule in ("token", "minp", "meanp"):
            em, f1, freq, ts = cross_validated(records, rule)
            rows[rule].append(cell(em, f1, freq) + f" t={ts[0]:g}/{ts[1]:g}")
        rel = relevance_metrics(records)
        need = retrieval_need_auc(records, "em")["retrieval_need_auc"]
        default = cell(*scores(records, lambda r: decide("token", r["no_retrieval"].get("p_retrieve"), 0.5)))
        quality.append([name, label, f"{percent(rel['relevance_accuracy'])} (n={rel['relevance_n']})", percent(rel["relevance_balanced_accuracy"]),
                        "-" if rel["relevance_auc"] is None else f"{rel['relevance_auc']:.3f}", percent(label_agreement(records)),
                        "-" if need is None else f"{need:.3f}", default, cell(*scores(records, lambda r: True))])
    return list(rows.values()), quality


BASELINES = (("standard_rag", "standard RAG (plain prompt, task instruction, same 3 passages)"),
             ("standard_rag_short", "standard RAG (plain prompt, short instruction, same 3 passages)"),
             ("closed_book", "no passages"))


def baseline_rows(name: str, folder: Path) -> list[list[str]]:
    rows = []
    for kind, label in BASELINES:
        row = [f"{name}, {label}"]
        for task, _ in TASKS:
            path = folder / f"{task}.{kind}.jsonl"
            records = read_records(path) if path.exists() else []
            row.append(cell(mean(r["metrics"]["em"] for r in records), mean(r["metrics"]["f1"] for r in records)) if records else "-")
        if any(c != "-" for c in row[1:]):
            rows.append(row)
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openrag", action="append", default=[], metavar="NAME=FOLDER", help="sweep folder of an Open-RAG model")
    parser.add_argument("--base", type=Path, help="baseline folder of the untrained base")
    args = parser.parse_args(argv)
    answers, quality = [], []
    for spec in args.openrag:
        name, _, folder = spec.rpartition("=")
        rows, q = openrag_rows(name or folder, Path(folder))
        answers += rows
        quality += q
    if args.base is not None:
        answers += baseline_rows("SmolLM2-135M-Instruct untrained", args.base)
    header = ["system"] + [f"{label} EM / F1" for _, label in TASKS]
    print(markdown(header, answers))
    qheader = ["model", "dataset", "relevance acc.", "relevance bal. acc.", "relevance AUC", "retrieval = label",
               "retrieval-need AUC", "token rule at 0.5: EM / F1 (retrieval)", "always retrieve: EM / F1"]
    print(markdown(qheader, quality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
