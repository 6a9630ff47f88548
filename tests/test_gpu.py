"""The built-in engine on a CUDA device: the bundled model answers as it does on the CPU.

Marked ``gpu``: skipped where torch sees no CUDA device (conftest.py), as in CI. The vLLM backend's GPU test
is in test_vllm_backend.py (it needs vLLM too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hotpotqa_dev100.jsonl"
TOLERANCE = 1e-3  # float32 on both devices; kernels differ, so sums differ in their last digits


def _questions(n: int):
    from openrag.eval.passages import read_questions

    examples, passages = read_questions(str(SAMPLE), 3, False)
    return [ex.question for ex in examples[:n]], passages[:n]


def test_cuda_answers_match_cpu():
    import torch

    from openrag.answer import OpenRAG

    questions, passages = _questions(20)
    options = dict(task="hotpotqa", max_new_tokens=48, retrieval_rule="minp", threshold=float("inf"))
    cpu = OpenRAG.from_pretrained("default", device="cpu").answer_batch(questions, passages, **options)
    cuda = OpenRAG.from_pretrained("default", device="cuda", dtype=torch.float32).answer_batch(questions, passages, **options)
    assert sum(a.text == b.text for a, b in zip(cpu, cuda)) >= 19
    for a, b in zip(cpu, cuda):
        assert abs(a.signals["p_retrieve"] - b.signals["p_retrieve"]) <= TOLERANCE
        for c, d in zip(a.candidates, b.candidates):
            if c.raw == d.raw:
                assert abs(c.score - d.score) <= TOLERANCE, (a.question, c.score, d.score)
