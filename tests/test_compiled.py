"""Compiled forwards (openrag.model.compiled) against the same model run eagerly, and the --compile flag.

One tiny expert model (gated experts: 4 x 8 = 32 = hidden size) is compiled once for the module; every test
compares it with the same weights run through the modules' own forwards. The first compile of the module's
graphs takes seconds (less from inductor's disk cache)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from .conftest import make_tiny_llama
from openrag.answer.backend_types import BackendOptions
from openrag.answer.backends import backend_options
from openrag.answer.engine import Engine
from openrag.model.compiled import compile_model, is_compiled
from openrag.model.experts import decoder_layers, inject_moe, moe_adapters, uses_gated_experts


def tiny_expert_model():
    model = make_tiny_llama()
    inject_moe(model, num_experts=4, topk=2, adapter_dim=8, moe_scaling=0.25, dropout=0.0)
    g = torch.Generator().manual_seed(3)
    for adapter in moe_adapters(model):  # non-zero experts (adapter_up starts at zero) and a sharper router
        for expert in adapter.experts.values():
            expert.adapter_up.weight.data = torch.randn(expert.adapter_up.weight.shape, generator=g) * 0.5
        adapter.router.weight.data *= 4
    return model.eval()


@pytest.fixture(scope="module")
def compiled_pair():
    """The tiny expert model compiled, and a copy of it that stays eager."""
    model = tiny_expert_model()
    assert uses_gated_experts(moe_adapters(model)[0].config, 32, torch.device("cpu"))
    eager = tiny_expert_model()
    before = graphs()
    assert compile_model(model) == len(decoder_layers(model))
    assert graphs() - before <= 2  # the norm's and the block's, shared by every layer and every token count
    return model, eager


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (3, 1), (4, 17)])
def test_compiled_logits_equal_eager(compiled_pair, shape):
    model, eager = compiled_pair
    x = torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        got, expected = model(input_ids=x).logits, eager(input_ids=x).logits  # [B, T, V]
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    for a, b in zip(moe_adapters(model), moe_adapters(eager)):  # the routing kept for logging is the same too
        assert torch.allclose(a.last_routing, b.last_routing, atol=1e-6)


def test_engine_answers_equal_compiled_and_eager(compiled_pair):
    model, eager = compiled_pair
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (6, 11)]
    rows = [(0, prompts[0] + [7, 9]), (1, prompts[1] + [4] * 13), (0, prompts[0]), (1, prompts[1][:4] + [12, 13, 14])]
    results = []
    for m in (model, eager):
        engine = Engine(m, stop_ids=[2], watch={"a": [5, 6]})
        results.append(engine.generate(engine.prefill(prompts), rows, max_new_tokens=10, max_batch=3))
    for got, expected in zip(*results):
        assert got.tokens == expected.tokens
        assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
        assert got.first["a"] == pytest.approx(expected.first["a"], abs=1e-4)


def test_every_batch_and_length_reuses_the_compiled_graphs(compiled_pair):
    """compile_model compiled one graph per function (its warm-up forward); no other token count, and no other
    layer, compiles another."""
    model, _ = compiled_pair
    before = graphs()
    with torch.inference_mode():
        for B, T in [(1, 2), (2, 1), (5, 3), (1, 33), (8, 1), (2, 64), (1, 1), (7, 7), (3, 100)]:
            model(input_ids=torch.zeros((B, T), dtype=torch.long))
    assert graphs() == before


def test_training_mode_runs_the_modules_own_forward(compiled_pair):
    model, eager = compiled_pair
    x = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    losses = []
    for m in (model, eager):
        m.train()
        try:
            out = m(input_ids=x, labels=x)
            out.loss.backward()
            losses.append((out.loss.item(), m.model.layers[0].mlp.moe_adapter.router.weight.grad.clone()))
        finally:
            m.zero_grad()
            m.eval()
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-6)


def test_dense_model_compiles_too():
    model, eager = make_tiny_llama(), make_tiny_llama()
    before = graphs()
    assert compile_model(model) == len(decoder_layers(model))
    assert graphs() - before <= 1  # the dense block's (the norm's is the expert model's)
    x = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=x).logits, eager(input_ids=x).logits, atol=1e-5)


@pytest.mark.parametrize("command", ["ask", "eval", "serve"])
def test_compile_flag(command):
    from openrag.cli import build_parser

    argv = {"ask": ["ask", "q"], "eval": ["eval", "--task", "hotpotqa"], "serve": ["serve"]}[command]
    parse = build_parser(with_flags=[command]).parse_args
    assert backend_options(parse([*argv, "--backend", "torch"]), batches=True).compile is False  # off unless asked
    assert backend_options(parse([*argv, "--backend", "torch", "--compile"]), batches=True).compile is True
    assert backend_options(parse([*argv, "--compile"]), batches=True).backend == "torch"  # the built-in engine's flag
    with pytest.raises(ValueError, match="vLLM compiles its own"):
        backend_options(parse([*argv, "--backend", "vllm", "--compile"]), batches=True)
    assert BackendOptions().compile is False


def test_load_compiles_only_when_asked(monkeypatch):
    from openrag.answer import backends
    from openrag.model import loading

    class Tokenizer:  # what add_reflection_tokens reads: the reflection tokens and a pad token are there already
        pad_token = "<pad>"

        def get_vocab(self):
            from openrag.model.reflection import REFLECTION_TOKENS

            return {t: i for i, t in enumerate(REFLECTION_TOKENS)}

    models = {"tiny": make_tiny_llama, "grouped": lambda: inject_moe(make_tiny_llama(), 4, 2, 16, 0.25)}  # 4 x 16 > 32
    monkeypatch.setattr(loading, "load_pretrained", lambda name, **k: loading.LoadedModel(models[name](), Tokenizer(), None))
    assert not is_compiled(backends.load_backend("tiny", backend=BackendOptions()).model)
    loaded = backends.load_backend("tiny", backend=BackendOptions(compile=True))
    assert is_compiled(loaded.model) and not loaded.notes
    loaded = backends.load_backend("grouped", backend=BackendOptions(compile=True))  # wide experts: the grouped path
    assert not is_compiled(loaded.model)
    assert any("runs eager" in note for note in loaded.notes)


@pytest.mark.parametrize("compile", [False, True])
def test_eval_summary_records_a_compiled_model(tiny_pair, monkeypatch, compile):
    from pathlib import Path

    from openrag.answer.pipeline import OpenRAG
    from openrag.eval.answerer import pipeline_answerer_factory
    from openrag.eval.request import EvalRequest

    model, tokenizer = tiny_pair
    if compile:
        compile_model(model)
    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda cls, name, **kw: cls(model, tokenizer)))
    examples = Path(__file__).resolve().parents[1] / "examples" / "hotpotqa_sample.jsonl"
    _, settings = pipeline_answerer_factory(EvalRequest(task="hotpotqa", dataset=str(examples)), False)
    assert settings.get("compiled", False) is compile  # absent when eager: older summaries read the same
