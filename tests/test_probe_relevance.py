"""scripts/probe_relevance.py: the AUC it reports, bad input files, and a probe that must find a linearly separable judgement on held-out questions."""

from __future__ import annotations

import pytest
import torch

from .conftest import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("probe_relevance")


def test_auc_counts_ordered_pairs_with_ties_half(probe):
    scores = [0.9, 0.4, 0.4, 0.1]
    gold = [True, True, False, False]
    # gold .9 beats both; gold .4 ties .4 (half) and beats .1: (2 + 1.5) / 4
    assert probe.auc(scores, gold) == pytest.approx(3.5 / 4)


def test_probe_separates_on_questions_it_was_not_fitted_on(probe):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2  # [N]
    features = torch.randn(200, 16, generator=g)  # [N, D]
    features[:, 3] += 4 * labels  # the judgement lies along one direction
    questions = [f"q{i // 2}" for i in range(200)]  # a question's gold and distractor stay together
    assert probe.probe_auc(features, labels.float(), questions) > 0.95
    noise = torch.randn(200, 16, generator=g)
    assert abs(probe.probe_auc(noise, labels.float(), questions) - 0.5) < 0.2


@pytest.mark.parametrize("text, message", [
    (None, "no data file"),
    ('{"conversation": [{"input": "Q?"}], "kind": "gold", "dataset": "hotpotqa"}\n', "conversation"),
    ('{"conversation": [{"input": "Q?", "output": "x"}], "kind": "no_retrieval", "dataset": "hotpotqa"}\n', "no HotpotQA or 2Wiki"),
])
def test_bad_data_files_exit_with_the_reason(probe, tmp_path, text, message):
    path = tmp_path / "train.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        probe.read_rows(str(path))
