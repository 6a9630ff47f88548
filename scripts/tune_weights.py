"""Candidate-selection weights tuned on training questions, then applied to held-out ones, offline.

    python scripts/tune_weights.py runs/eval_train/hotpotqa.sweep.jsonl --apply runs/eval_v3/hotpotqa.sweep.jsonl

Several tuning files are read as one set (questions of several datasets, one metric).

Each record of an ``openrag eval sweep`` file keeps every candidate's answer and the unweighted terms of
the candidate score (docs/method.md section 6: relevance, groundedness, utility, seq_score). This script
re-chooses each question's always-retrieve answer under every setting of a small grid of weights (w_rel, w_sup,
w_use, seq_score on or off) and of pooling (the scores of identical answers summed before choosing, as closed tasks
always do; ``--closed`` on ``ask``), scores it against the gold answers, takes the setting with the best EM (then F1) on
the tuning file, and prints it beside the evaluation's own weights (w_use 0.5, the rest 1) and the oracle (any
candidate right) on every file. No generation: it runs in seconds. Tune on training questions only; --apply files
are held out.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

from openrag.answer.scoring import candidate_score, choose
from openrag.eval.metrics import score_answer
from openrag.eval.runner import read_records
from openrag.tasks import TASKS, get_task

SCORED_TASKS = tuple(name for name, t in TASKS.items() if t.metric == "hotpotem")  # EM and F1 per answer

W_REL = (0.0, 0.5, 1.0, 2.0, 4.0)
W_SUP = (0.0, 0.5, 1.0, 2.0)
W_USE = (0.0, 0.25, 0.5, 1.0)
SEQ = (True, False)
POOLED = (False, True)
EVAL_WEIGHTS = (1.0, 1.0, 0.5, True)  # scripts/eval_bundled.sh: --w_use 0.5, w_rel and w_sup at their default 1


def options(weights: tuple[float, float, float, bool]) -> SimpleNamespace:
    w_rel, w_sup, w_use, seq = weights
    return SimpleNamespace(w_rel=w_rel, w_sup=w_sup, w_use=w_use, use_seqscore=seq, use_groundness=True, use_utility=True)


def rescored(records: list[dict], weights, metric: str, closed: bool) -> tuple[float, float]:
    """(EM, F1) in percent of the always-retrieve answers chosen under ``weights``."""
    opts = options(weights)
    em = f1 = 0.0
    for r in records:
        candidates = [SimpleNamespace(text=c["text"], score=candidate_score(c, opts)) for c in r["candidates"]]
        scored = score_answer(metric, choose(candidates, closed), r["answers"])
        em += scored["em"]
        f1 += scored["f1"]
    return 100 * em / len(records), 100 * f1 / len(records)


def oracle(records: list[dict], metric: str) -> float:
    """EM in percent when some candidate's answer is right."""
    return 100 * sum(max(score_answer(metric, c["text"], r["answers"])["em"] for c in r["candidates"]) for r in records) / len(records)


def recorded(records: list[dict]) -> float:
    """EM in percent of the always-retrieve answers the file holds (the evaluation's weights must reproduce it)."""
    return 100 * sum(r["metrics"]["em"] for r in records) / len(records)


def load(path: Path) -> list[dict]:
    """The answers of a sweep file that have candidates; a clear exit on a missing, malformed or foreign file."""
    if not path.is_file():
        sys.exit(f"tune_weights: no file at {path}; give a .sweep.jsonl written by `openrag eval sweep`")
    try:
        records = [r for r in read_records(path) if r.get("candidates")]
    except ValueError as err:
        sys.exit(f"tune_weights: {err}")
    if not records:
        sys.exit(f"tune_weights: {path} holds no answers with candidates; give a file written by `openrag eval sweep`")
    fields = ("text", "relevance", "groundedness", "utility", "seq_score")
    for r in records:
        if "answers" not in r or "em" not in r.get("metrics", {}) or any(f not in c for c in r["candidates"] for f in fields):
            sys.exit(f"tune_weights: {path}: answer {r.get('id')!r} lacks its gold answers, EM or candidate score terms; "
                     "give a file written by `openrag eval sweep` with --metric hotpotem")
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tune", type=Path, nargs="+", help="sweep files of training questions (weights are chosen here)")
    ap.add_argument("--apply", type=Path, action="append", default=[], help="sweep file of held-out questions (repeatable)")
    ap.add_argument("--task", default="hotpotqa", choices=SCORED_TASKS, help="the task the files answer (its answer aggregation)")
    ap.add_argument("--top", type=int, default=5, help="how many of the best settings to list")
    args = ap.parse_args(argv)
    task = get_task(args.task)
    tune = [r for path in args.tune for r in load(path)]
    # a setting: (w_rel, w_sup, w_use, seq_score, pooled); a closed task always pools
    grid = list(itertools.product(W_REL, W_SUP, W_USE, SEQ, (True,) if task.closed else POOLED))
    evaluation = (*EVAL_WEIGHTS, task.closed)
    results = {s: rescored(tune, s[:4], task.metric, s[4]) for s in grid}
    # best EM, then F1, then the setting nearest the evaluation's (fewest changed weights)
    ranked = sorted(grid, key=lambda s: (-results[s][0], -results[s][1], sum(a != b for a, b in zip(s, evaluation))))
    names = " ".join(str(p) for p in args.tune)
    print(f"{names}: {len(tune)} questions, its answers' EM {recorded(tune):.1f}, oracle EM {oracle(tune, task.metric):.1f}")
    print("| w_rel | w_sup | w_use | seq_score | pooled | EM | F1 |\n|---|---|---|---|---|---|---|")
    for s in [evaluation] + ranked[:args.top]:
        label = " (evaluation's)" if s == evaluation else ""
        print(f"| {s[0]} | {s[1]} | {s[2]} | {'on' if s[3] else 'off'} | {'yes' if s[4] else 'no'}{label} | {results[s][0]:.1f} "
              f"| {results[s][1]:.1f} |")
    best = ranked[0]
    for path in args.apply:
        held = load(path)
        base, tuned = rescored(held, EVAL_WEIGHTS, task.metric, task.closed), rescored(held, best[:4], task.metric, best[4])
        print(f"{path}: {len(held)} questions, its answers' EM {recorded(held):.1f}, oracle EM {oracle(held, task.metric):.1f}; evaluation's weights EM/F1 "
              f"{base[0]:.1f}/{base[1]:.1f}; tuned {best} EM/F1 {tuned[0]:.1f}/{tuned[1]:.1f}")


if __name__ == "__main__":
    main()
