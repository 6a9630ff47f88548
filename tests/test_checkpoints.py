"""Every checkpoint layout load_model accepts, against a reference built in the test."""

import copy
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from openrag import CheckpointError, add_reflection_tokens, inject_moe, load_model, save_adapter, save_merged
from openrag.model.layouts import read_released_moe_bin

from .conftest import make_tiny_llama_for
from .test_moe import randomise_experts, reference_logits

IDS = torch.tensor([[5, 17, 300, 42, 9, 1000, 3]])


@pytest.fixture
def pair(smollm2_tokenizer):
    """(dense reference model, injected model with random experts, tokenizer with reflection tokens)."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    dense = make_tiny_llama_for(tokenizer)
    add_reflection_tokens(dense, tokenizer)
    injected = copy.deepcopy(dense)
    inject_moe(injected, num_experts=4, topk=2, adapter_dim=8, moe_scaling=0.25)
    randomise_experts(injected)
    return dense, injected.eval(), tokenizer


def write_released_layout(folder, dense, injected, tokenizer):
    """What the released merged checkpoints hold: a Llama config with the MoE fields, one safetensors
    file with the ordinary Llama keys plus model.layers.{i}.mlp.moe_adapter.*, and remote-code auto_map."""
    folder.mkdir()
    config = dense.config.to_dict()
    config.update(adapter_dim=8, num_experts=4, topk=2, moe_scaling=0.25, moe_dtype="bfloat16", output_router_logits=False)
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_llama_moe.LlamaForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in dense.state_dict().items()}
    for k, v in injected.state_dict().items():
        if ".moe_adapter." in k:
            tensors[k] = v.contiguous()
    save_file(tensors, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)
    return tensors


def test_released_layout_loads_and_matches_reference(tmp_path, pair):
    dense, injected, tokenizer = pair
    write_released_layout(tmp_path / "released", dense, injected, tokenizer)
    model, tok = load_model(str(tmp_path / "released"), device="cpu")
    assert model.config.num_experts == 4 and len(tok) == len(tokenizer)
    with torch.no_grad():
        got = model(IDS).logits
    torch.testing.assert_close(got, reference_logits(dense, injected, IDS, 2, 0.25), atol=1e-5, rtol=0)


def test_truncated_checkpoint_is_reported(tmp_path, pair):
    write_released_layout(tmp_path / "released", *pair)
    path = tmp_path / "released" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(str(tmp_path / "released"), device="cpu")


def test_misshaped_expert_names_key_and_shape(tmp_path, pair):
    dense, injected, tokenizer = pair
    tensors = write_released_layout(tmp_path / "released", dense, injected, tokenizer)
    key = "model.layers.1.mlp.moe_adapter.experts.expert_2.adapter_down.weight"
    tensors[key] = torch.zeros(6, 32)
    save_file(tensors, str(tmp_path / "released" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"expert_2\.adapter_down\.weight.*\[6, 32\].*expected \[8, 32\]"):
        load_model(str(tmp_path / "released"), device="cpu")


def test_missing_keys_are_named(tmp_path, pair):
    dense, injected, tokenizer = pair
    tensors = write_released_layout(tmp_path / "released", dense, injected, tokenizer)
    for gone, shape in [("model.layers.0.mlp.moe_adapter.router.weight", r"\[4, 32\]"), ("model.layers.1.self_attn.q_proj.weight", r"\[32, 32\]")]:
        save_file({k: v for k, v in tensors.items() if k != gone}, str(tmp_path / "released" / "model.safetensors"))
        with pytest.raises(CheckpointError, match=rf"missing tensor '{gone}' \(expected shape {shape}\)"):
            load_model(str(tmp_path / "released"), device="cpu")


def test_merged_layout_round_trip_is_exact(tmp_path, pair):
    _, injected, tokenizer = pair
    save_merged(injected, tokenizer, tmp_path / "merged")
    loaded, _ = load_model(str(tmp_path / "merged"), device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, injected(IDS).logits)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), injected.state_dict().values()))


def test_adapter_layout_round_trip_is_exact(tmp_path, smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    base = make_tiny_llama_for(tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    n0 = len(tokenizer)
    model = copy.deepcopy(base)
    add_reflection_tokens(model, tokenizer)
    inject_moe(model, num_experts=3, topk=2, adapter_dim=4, moe_scaling=0.5)
    randomise_experts(model)
    with torch.no_grad():
        model.get_input_embeddings().weight[n0:] = torch.randn(15, 32)
        model.get_output_embeddings().weight[n0:] = torch.randn(15, 32)
    save_adapter(model, tokenizer, tmp_path / "adapter", base_model=str(tmp_path / "base"), num_base_tokens=n0)
    size = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    assert size < sum(p.numel() for p in model.parameters()) * 4 / 5  # small: no dense weights
    loaded, tok = load_model(str(tmp_path / "adapter"), device="cpu")
    assert len(tok) == n0 + 15
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model.eval()(IDS).logits)


def test_an_adapter_for_an_accelerator_loads_in_its_base_dtype(tmp_path, smollm2_tokenizer):
    """Off the CPU a checkpoint computes in its own dtype; an adapter's base is assembled on the CPU first, and must
    not take the CPU's choice (float32 here, bf16 on a CPU with fast bf16) with it. The meta device stands in for a GPU."""
    from openrag.model.loading import load_adapter

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    base = make_tiny_llama_for(tokenizer).to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    n0 = len(tokenizer)
    model = copy.deepcopy(base).float()
    add_reflection_tokens(model, tokenizer)
    save_adapter(model, tokenizer, tmp_path / "adapter", base_model=str(tmp_path / "base"), num_base_tokens=n0)
    assert load_adapter(tmp_path / "adapter", None, torch.device("meta")).model.dtype == torch.bfloat16
    assert load_adapter(tmp_path / "adapter", None, torch.device("cpu")).model.dtype == torch.float32  # conftest: float32 CPU


def test_a_save_cut_short_is_passed_over_for_the_last_whole_one(tmp_path, smollm2_tokenizer, monkeypatch):
    from openrag.model.layouts import find_checkpoint

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    model = make_tiny_llama_for(tokenizer)
    n0 = len(tokenizer)
    add_reflection_tokens(model, tokenizer)
    save_adapter(model, tokenizer, tmp_path / "checkpoint-2", base_model="base", num_base_tokens=n0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tokenizer), "save_pretrained", killed)  # the run is killed while saving step 4
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, tokenizer, tmp_path / "checkpoint-4", base_model="base", num_base_tokens=n0)
    assert (tmp_path / "checkpoint-4" / "adapter.safetensors").is_file()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_released_moe_bin_is_read_without_unpickling_objects(tmp_path):
    good = {"base_model.model.model.layers.0.mlp.moe_adapter.router.weight": torch.ones(2, 3)}
    torch.save(good, tmp_path / "moe_model.bin")
    assert torch.equal(read_released_moe_bin(tmp_path / "moe_model.bin")[next(iter(good))], torch.ones(2, 3))
    torch.save({"w": torch.ones(1), "evil": ValueError("not a tensor")}, tmp_path / "bad.bin")
    with pytest.raises(CheckpointError, match="bad.bin"):
        read_released_moe_bin(tmp_path / "bad.bin")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_model(str(tmp_path / "nope" / "deeper"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")


def test_expert_settings_are_checked_wherever_they_are_read():
    from types import SimpleNamespace

    from openrag.model.layouts import moe_settings, released_moe_config

    good = {"num_experts": 4, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25}
    assert moe_settings({**good, "num_experts": 4.0}, "f").num_experts == 4
    for bad, said in [({**good, "num_experts": 4.7}, "'num_experts' is 4.7, not a whole number"),
                      ({**good, "moe_scaling": float("inf")}, "'moe_scaling' is inf, not a finite number"),
                      ({**good, "topk": True}, "'topk' is True"), ([4, 2], "not an object")]:
        with pytest.raises(CheckpointError, match=f"^f: .*{re.escape(said)}"):
            moe_settings(bad, "f")
    merged = SimpleNamespace(_name_or_path="/m", **{**good, "topk": None})  # a merged config.json missing a field
    with pytest.raises(CheckpointError, match="^/m/config.json: expert setting 'topk' is None"):
        released_moe_config(merged)
    assert released_moe_config(SimpleNamespace(num_experts=60, num_experts_per_tok=4)) is None  # another kind of MoE
