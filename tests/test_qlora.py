"""QLoRA (``--bits 4``) on the CPU: the frozen base in NF4 through bitsandbytes' CPU backend, experts and LoRA
trained; the saved adapter loads over the unquantised base and merges into it."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from openrag import load_model
from openrag.model.merge import merge

from .train_helpers import losses, run_train, train_argv, write_base, write_dataset

IDS = torch.tensor([[5, 9, 3, 17, 8, 2, 30, 41]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    root = tmp_path_factory.mktemp("qlora")
    base, data, out = write_base(root / "base"), write_dataset(root / "data.jsonl"), root / "out"
    trainer = run_train(train_argv(base, data, out, "--bits", "4", "--max_steps", "12", "--learning_rate", "2e-2"))
    return trainer, base, out


def test_the_base_is_nf4_and_the_loss_falls(trained):
    import bitsandbytes as bnb

    trainer, _, _ = trained
    q_proj = trainer.setup.inner.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_state.quant_type == "nf4"
    by_step = losses(trainer)
    first, last = [by_step[s] for s in (1, 2, 3)], [by_step[s] for s in (10, 11, 12)]
    assert sum(last) / 3 < 0.8 * sum(first) / 3, by_step


def test_the_adapter_merges_into_the_unquantised_base(trained, tmp_path):
    """Merged projection = base + (alpha / r) B A, computed here from the saved files; experts copied as trained."""
    _, base, out = trained
    merged = merge(out, output_dir=tmp_path / "merged")
    dense, base_weights = load_file(str(merged / "model.safetensors")), load_file(str(base / "model.safetensors"))
    lora = load_file(str(out / "lora" / "adapter_model.safetensors"))
    settings = json.loads((out / "lora" / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    projections = [k for k in lora if k.endswith(".lora_A.weight") and ".layers." in k]
    assert len(projections) == 2 * 7  # q, k, v, o, gate, up, down in both layers
    for key_a in projections:
        name = key_a.removeprefix("base_model.model.").replace(".mlp.dense_mlp.", ".mlp.").replace(".lora_A", "")
        delta = lora[key_a.replace("lora_A", "lora_B")] @ lora[key_a]  # [out, r] @ [r, in]
        assert delta.abs().max() > 0, name
        assert torch.allclose(dense[name], base_weights[name] + scale * delta, atol=1e-6), name
    experts = load_file(str(out / "adapter.safetensors"))
    for key, tensor in load_file(str(merged / "moe_adapter.safetensors")).items():
        assert torch.equal(tensor, experts[key]), key

    with torch.no_grad():
        from_adapter = load_model(str(out), device="cpu")[0](input_ids=IDS).logits
        from_merged = load_model(str(merged), device="cpu")[0](input_ids=IDS).logits
    assert torch.allclose(from_merged, from_adapter, atol=1e-5)


def test_without_bitsandbytes_four_bits_says_what_to_install(tmp_path, monkeypatch):
    from openrag.training.args import ModelArguments, MoEArguments
    from openrag.training.setup import build_model

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"needs bitsandbytes: pip install 'openrag\[qlora\]'"):
        build_model(ModelArguments(str(write_base(tmp_path / "base")), bits=4), MoEArguments(4, 2, 8))
