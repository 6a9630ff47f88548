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


def assert_same_answers(expected, got, flips: int = 1) -> None:
    """``got`` answers as ``expected`` does: as many answers, each with its candidates for the same passages, the same
    raw text (reflection tokens and all) for all but ``flips`` candidates of all (float32 kernels differ in their last
    digits, which may turn a near tie), and the same probabilities and scores within TOLERANCE where the text is the same."""
    assert len(got) == len(expected)
    differ = []
    for a, b in zip(expected, got, strict=True):
        assert abs(a.signals["p_retrieve"] - b.signals["p_retrieve"]) <= TOLERANCE, a.question
        assert [c.passage for c in b.candidates] == [c.passage for c in a.candidates], a.question
        for c, d in zip(a.candidates, b.candidates, strict=True):
            if c.raw != d.raw:
                differ.append((a.question, c.raw, d.raw))
            else:
                assert abs(c.score - d.score) <= TOLERANCE, (a.question, c.score, d.score)
    assert len(differ) <= flips, differ
    assert sum(a.text != b.text for a, b in zip(expected, got)) <= flips


def test_cuda_answers_match_cpu():
    import torch

    from openrag.answer import OpenRAG

    questions, passages = _questions(20)
    options = dict(task="hotpotqa", max_new_tokens=48, retrieval_rule="minp", threshold=float("inf"))
    cpu = OpenRAG.from_pretrained("default", device="cpu").answer_batch(questions, passages, **options)
    cuda = OpenRAG.from_pretrained("default", device="cuda", dtype=torch.float32).answer_batch(questions, passages, **options)
    assert all(len(a.candidates) == 3 for a in cpu)  # every question retrieved (threshold inf): 3 candidates each
    assert_same_answers(cpu, cuda)
