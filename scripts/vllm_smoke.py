"""Smoke test of --backend vllm: the five sample questions through both backends, side by side.

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 .venv-vllm/bin/python scripts/vllm_smoke.py [N_QUESTIONS_FROM_HOTPOTQA_DEV]

Prints each question's answer, retrieval value and candidate scores from the built-in engine and from vLLM,
and the largest differences. vLLM starts its workers with spawn: this file's work stays under the main guard.
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from openrag.answer import OpenRAG
    from openrag.answer.backends import BackendOptions
    from openrag.commands.ask import read_questions

    path = ROOT / "examples" / "hotpotqa_sample.jsonl"
    if len(sys.argv) > 1:
        path = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpotqa_dev_ircot500.jsonl"
    examples, passages = read_questions(str(path), 3, False)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else len(examples)
    questions, passages = [ex.question for ex in examples[:n]], passages[:n]
    options = dict(task="hotpotqa", max_new_tokens=48, retrieval_rule="minp", threshold=float("inf"))
    results = {}
    for name, backend in (("torch", "torch"), ("vllm", BackendOptions(backend="vllm", enforce_eager=True))):
        t0 = time.perf_counter()
        rag = OpenRAG.from_pretrained("default", device="cpu" if name == "torch" else None, backend=backend)
        t1 = time.perf_counter()
        results[name] = rag.answer_batch(questions, passages, **options)
        print(f"{name}: loaded in {t1 - t0:.1f}s, answered {len(questions)} questions in {time.perf_counter() - t1:.1f}s")
        if name == "vllm":
            rag.engine.close()
    same, worst = 0, 0.0
    for a, b in zip(results["torch"], results["vllm"]):
        same += a.text == b.text
        print(f"\n{a.question}\n  torch: {a.text!r}  p_retrieve={a.signals['p_retrieve']:.5f} minp={a.signals['minp']:.5f}"
              f"\n  vllm:  {b.text!r}  p_retrieve={b.signals['p_retrieve']:.5f} minp={b.signals['minp']:.5f}")
        for c, d in zip(a.candidates, b.candidates):
            flag = "" if c.raw == d.raw else "   (different generation)"
            print(f"    score {c.score:.5f} / {d.score:.5f}  {c.raw!r} / {d.raw!r}{flag}")
            if c.raw == d.raw:
                worst = max(worst, abs(c.score - d.score))
        worst = max(worst, abs(a.signals["p_retrieve"] - b.signals["p_retrieve"]))
    print(f"\nsame final answer: {same}/{len(questions)}; largest score / p_retrieve difference on equal rows: {worst:.2e}")


if __name__ == "__main__":
    main()
