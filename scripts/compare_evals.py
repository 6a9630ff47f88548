"""Two ``openrag eval`` runs of the same questions compared row by row: how far a change of precision (or backend,
or compiled forwards) moves what a user sees (issue 30).

    python scripts/compare_evals.py runs/dtype/hotpotqa.float32.jsonl runs/dtype/hotpotqa.bfloat16.jsonl [--json F]

Rows are matched by their ``id`` (else their ``index``); rows only one run has are counted, not compared. Per matched
row: the same final answer (``prediction``, exactly), the same retrieval decision (``retrieved``), each run's EM; per
candidate (matched by position, the same passage in both runs): the same text, and how far its relevance,
groundedness and utility moved (absolute difference of the probabilities); per adaptive row the retrieval value
(``retrieval_value``, P([Retrieval]) or the rule's value) likewise. EM uses each record's own ``metrics.em``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openrag.eval.runner import read_records

PROBABILITIES = ("relevance", "groundedness", "utility")


def _key(record: dict) -> str:
    return str(record.get("id", record.get("index")))


def _spread(values: list[float]) -> dict:
    """Mean and largest absolute difference, or nulls when there is none."""
    if not values:
        return {"n": 0, "mean": None, "max": None}
    return {"n": len(values), "mean": sum(values) / len(values), "max": max(values)}


def compare(a: list[dict], b: list[dict]) -> dict:
    """Agreement of run ``b`` with run ``a`` (see the module docstring)."""
    by_key = {_key(r): r for r in b}
    pairs = [(r, by_key[_key(r)]) for r in a if _key(r) in by_key]
    moved = {p: [] for p in (*PROBABILITIES, "retrieval_value")}
    same_text = candidates = 0
    for ra, rb in pairs:
        for ca, cb in zip(ra.get("candidates") or [], rb.get("candidates") or []):
            if (ca.get("passage") or {}).get("title") != (cb.get("passage") or {}).get("title"):
                continue
            candidates += 1
            same_text += ca.get("text") == cb.get("text")
            for p in PROBABILITIES:
                if isinstance(ca.get(p), (int, float)) and isinstance(cb.get(p), (int, float)):
                    moved[p].append(abs(ca[p] - cb[p]))
        if isinstance(ra.get("retrieval_value"), (int, float)) and isinstance(rb.get("retrieval_value"), (int, float)):
            moved["retrieval_value"].append(abs(ra["retrieval_value"] - rb["retrieval_value"]))
    n = len(pairs)
    firsts, seconds = [ra for ra, _ in pairs], [rb for _, rb in pairs]
    return {
        "matched": n, "only_first": len(a) - n, "only_second": len(b) - n,
        "same_answer": sum(ra["prediction"] == rb["prediction"] for ra, rb in pairs),
        "same_retrieval": sum(ra.get("retrieved") == rb.get("retrieved") for ra, rb in pairs),
        "retrieved": [sum(bool(r.get("retrieved")) for r in side) for side in (firsts, seconds)],
        "em": [100 * sum(r["metrics"]["em"] for r in side) / n if n else None for side in (firsts, seconds)],
        "em_changed": sum(ra["metrics"]["em"] != rb["metrics"]["em"] for ra, rb in pairs),
        "candidates": candidates, "same_candidate_text": same_text,
        "moved": {p: _spread(v) for p, v in moved.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="the reference run's output (JSON lines)")
    parser.add_argument("second", type=Path, help="the run compared with it")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)
    runs = []
    for path in (args.first, args.second):
        if not path.is_file():
            print(f"error: no eval output at {path}: pass the .jsonl that `openrag eval` wrote", file=sys.stderr)
            return 2
        try:
            runs.append(read_records(path))
        except (ValueError, UnicodeDecodeError) as err:
            print(f"error: {path}: not `openrag eval` output ({err})", file=sys.stderr)
            return 2
    try:
        result = compare(*runs)
    except (KeyError, TypeError) as err:
        print(f"error: a row lacks the field {err} that `openrag eval` writes: pass the .jsonl it wrote", file=sys.stderr)
        return 2
    n = result["matched"]
    print(f"{n} rows in both ({result['only_first']} only in the first, {result['only_second']} only in the second)")
    if n:
        print(f"same answer {result['same_answer']}/{n}; same retrieval decision {result['same_retrieval']}/{n} "
              f"(retrieved {result['retrieved'][0]} vs {result['retrieved'][1]}); EM {result['em'][0]:.1f} vs "
              f"{result['em'][1]:.1f} ({result['em_changed']} rows changed)")
        print(f"same candidate text {result['same_candidate_text']}/{result['candidates']}")
        for p, s in result["moved"].items():
            if s["n"]:
                print(f"{p}: moved {s['mean']:.4f} on average, {s['max']:.4f} at most ({s['n']} values)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
