"""``openrag eval --baseline`` (plain-prompt answers) and the relevance accuracy of Open-RAG's eval summary."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from openrag.eval.baseline import PlainAnswerer, first_answer_line, plain_prompt
from openrag.eval.evaluate import evaluate, evaluate_sweep
from openrag.eval.request import EvalRequest
from openrag.eval.runner import read_records

from .conftest import make_tiny_llama_for
from .test_eval_model import DATA, hotpot4, request, tiny_factory  # noqa: F401  (hotpot4 is a fixture)


@pytest.fixture(scope="module")
def plain_pair(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    return make_tiny_llama_for(tokenizer, max_position_embeddings=4096).eval(), tokenizer


def plain_factory(pair):
    def factory(req, both):
        model, tokenizer = pair
        return PlainAnswerer(model, tokenizer, req.task, req.baseline == "standard_rag", req.options["max_new_tokens"]), {}

    return factory


def greedy(model, tokenizer, prompt: str, steps: int) -> str:
    """Reference: one prompt alone, no padding, argmax token by token, stop at the end-of-text token."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tokenizer.decode(out, skip_special_tokens=True)


def baseline_request(data, out, baseline, **kw):
    return EvalRequest(task="hotpotqa", dataset=str(data), output_file=out, progress=False, ndocs=2, batch_size=3,
                       options={"max_new_tokens": 5}, baseline=baseline, **kw)


@pytest.mark.parametrize("baseline", ["standard_rag", "closed_book"])
def test_batched_baseline_answers_equal_one_by_one_greedy(plain_pair, hotpot4, tmp_path, baseline):
    model, tokenizer = plain_pair
    summary = evaluate(baseline_request(hotpot4, tmp_path / "b.jsonl", baseline), plain_factory(plain_pair))
    records = read_records(tmp_path / "b.jsonl")
    assert summary["n"] == 4 and summary["baseline"] == baseline
    assert summary["retrieval_frequency"] == (1.0 if baseline == "standard_rag" else 0.0)
    rows = [json.loads(line) for line in hotpot4.read_text().splitlines()]
    for r, row in zip(records, rows):
        shown = r.get("passages", [])
        assert len(shown) == (2 if baseline == "standard_rag" else 0)
        prompt = plain_prompt(tokenizer, "hotpotqa", row["question_text"], [_P(**p) for p in shown])
        assert all(p["text"][:50] in prompt for p in shown) and row["question_text"] in prompt
        assert prompt.startswith("<|im_start|>")  # the tokenizer's chat template
        assert r["raw"] == greedy(model, tokenizer, prompt, 5)  # left padding in a batch of 3 changes nothing
        assert r["prediction"] == first_answer_line(r["raw"])


class _P:
    def __init__(self, title, text):
        self.title, self.text = title, text


def test_first_answer_line():
    assert first_answer_line("\n\nAnswer: Chief of Protocol\nBecause ...") == "Chief of Protocol"
    assert first_answer_line("The answer is: Paris.") == "Paris."
    assert first_answer_line("Answering machines") == "Answering machines"
    assert first_answer_line("") == ""


def test_baseline_refuses_open_rag_options_and_sweep(hotpot4, tmp_path):
    with pytest.raises(ValueError, match="--mode"):
        EvalRequest(task="hotpotqa", dataset=str(hotpot4), options={"mode": "always_retrieve"}, baseline="closed_book")
    with pytest.raises(ValueError, match="unknown --baseline"):
        EvalRequest(task="hotpotqa", dataset=str(hotpot4), baseline="plain")
    with pytest.raises(ValueError, match="no retrieval decision"):
        evaluate_sweep(baseline_request(hotpot4, tmp_path / "s.jsonl", "standard_rag"))
    with pytest.raises(ValueError, match="drop --index"):
        EvalRequest(task="hotpotqa", dataset=str(hotpot4), baseline="standard_rag", index=str(tmp_path))
    with pytest.raises(ValueError, match="--ndocs/--top_k must be at least 1, got 0"):
        EvalRequest(task="hotpotqa", dataset=str(hotpot4), baseline="standard_rag", ndocs=0)
    with pytest.raises(ValueError, match="--max_new_tokens must be at least 1, got 0"):
        EvalRequest(task="hotpotqa", dataset=str(hotpot4), baseline="standard_rag", options={"max_new_tokens": 0})


def test_a_prompt_over_the_context_window_is_refused_by_name(plain_pair, hotpot4, tmp_path):
    req = EvalRequest(task="hotpotqa", dataset=str(hotpot4), output_file=tmp_path / "o.jsonl", progress=False, ndocs=2,
                      options={"max_new_tokens": 4096}, baseline="standard_rag")
    with pytest.raises(ValueError, match="context window of 4096"):
        evaluate(req, plain_factory(plain_pair))


def test_relevance_accuracy_against_the_gold_flags(tiny_pair, hotpot4, tmp_path):
    summary = evaluate(request(hotpot4, tmp_path / "r.jsonl"), tiny_factory(tiny_pair))
    rows = [json.loads(line) for line in hotpot4.read_text().splitlines()]
    hits = total = 0
    for r, row in zip(read_records(tmp_path / "r.jsonl"), rows):
        supporting = {c["title"] for c in row["contexts"] if c["is_supporting"]}
        for c in r["candidates"]:
            assert c["passage"]["is_gold"] == (c["passage"]["title"] in supporting)
            hits += (c["relevance"] > 0.5) == (c["passage"]["title"] in supporting)
            total += 1
    assert summary["relevance_n"] == total == 8
    assert summary["relevance_accuracy"] == pytest.approx(hits / total)


def test_an_instruction_replaces_the_tasks(plain_pair, hotpot4):
    from openrag.tasks import MULTIHOP_INSTRUCTION as TASK_INSTRUCTION

    _, tokenizer = plain_pair
    mine = "Answer in a few words."
    prompt = plain_prompt(tokenizer, "hotpotqa", "Who?", [_P("T", "Some text.")], instruction=mine)
    assert mine in prompt and TASK_INSTRUCTION not in prompt and "[1] T: Some text." in prompt
    assert TASK_INSTRUCTION in plain_prompt(tokenizer, "hotpotqa", "Who?", None)
    with pytest.raises(ValueError, match="--instruction"):
        EvalRequest(task="hotpotqa", dataset=str(hotpot4), instruction=mine)
