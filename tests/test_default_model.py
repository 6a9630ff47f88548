"""The bundled trained Open-RAG model (openrag/assets/default) over the bundled SmolLM2 base, offline."""

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def default_rag():
    from openrag import OpenRAG

    return OpenRAG.from_pretrained("default", device="cpu")


def test_default_model_is_the_trained_expert_model(default_rag):
    from openrag import moe_config_of
    from openrag.model.experts import moe_adapters
    from openrag.model.reflection import reflection_token_ids

    model = default_rag.model
    assert moe_config_of(model).num_experts == 8 and moe_config_of(model).topk == 2
    assert len(reflection_token_ids(default_rag.tokenizer)) == 15
    # trained: the up projections start at zero and must have moved
    assert all(a.experts["expert_0"].adapter_up.weight.abs().sum() > 0 for a in moe_adapters(model))
    assert not default_rag.notes  # no "untrained reflection tokens" note
    assert default_rag.model_prompt_format == "training"  # prompted the way it was trained (README, prompt formats)


def test_default_model_answers_the_sample_with_scored_evidence(default_rag):
    passages = json.loads((EXAMPLES / "passages.json").read_text())
    question = "What government position was held by the woman who portrayed Corliss Archer in the film Kiss and Tell?"
    answer = default_rag.answer(question, passages, mode="always_retrieve", max_new_tokens=24)
    assert answer.retrieved and len(answer.candidates) == 3
    assert answer.text.strip()  # the untrained base ends its evidence rows at once: empty answers
    for c in answer.candidates:
        assert 0.0 <= c.relevance <= 1.0 and 0.0 <= c.groundedness <= 1.0
    assert torch.isfinite(torch.tensor([c.score for c in answer.candidates])).all()


KNOWN_GAP = pytest.mark.xfail(strict=True, reason="the shipped model does not yet (MODEL.md, 'What limits the targets'); "
                               "strict: a model that passes makes this fail, so the mark is removed with it")


def test_default_model_answers_a_single_hop_question_from_its_passage(default_rag):
    # The issue that retrained the model: the step-350 checkpoint answered "Hamlet" here (no single-hop
    # questions in its data); a passage that states the answer must give it.
    passages = [{"title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare."}]
    answer = default_rag.answer("Who wrote the tragedy Hamlet?", passages, mode="always_retrieve", max_new_tokens=16)
    assert "william shakespeare" in answer.text.lower()


@KNOWN_GAP
def test_default_model_answers_the_page_example_from_its_passage(default_rag):
    # The web page's example (issue 28): the shipped model rates the film's paragraph 0.91 relevant and answers
    # "Ridley Scott", the bridge (the film's director) instead of the novel's author.
    passages = [{"title": "Blade Runner", "text": "Blade Runner is a 1982 science fiction film directed by Ridley Scott. "
                 "It is an adaptation of Philip K. Dick's 1968 novel Do Androids Dream of Electric Sheep?"},
                {"title": "Paris", "text": "Paris is the capital and most populous city of France."}]
    answer = default_rag.answer("Who wrote the novel the film Blade Runner is based on?", passages, mode="always_retrieve", max_new_tokens=16)
    assert "philip k. dick" in answer.text.lower()


@KNOWN_GAP
def test_default_model_tells_the_gold_passage_from_a_distractor(default_rag):
    gold = {"title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601."}
    distractor = {"title": "Hamlet (place)", "text": "A hamlet is a small human settlement, smaller than a village."}
    answer = default_rag.answer("Who wrote the tragedy Hamlet?", [gold, distractor], mode="always_retrieve", max_new_tokens=16)
    by_title = {c.passage["title"]: c.relevance for c in answer.candidates}
    assert by_title["Hamlet"] > 0.5 > by_title["Hamlet (place)"]
