"""The vLLM backend's parts that need no vLLM: the experts in their serving form, the folder vLLM loads, and
the backend option and flags. (tests/test_vllm_backend.py runs vLLM itself, in an environment that has it.)

The folder tests load the written folder back with transformers (openrag.load_model) and compare its logits
with the checkpoint's own: whatever vLLM computes from the folder, it starts from these weights.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os

import pytest
import torch

from openrag import add_reflection_tokens, inject_moe, load_model, save_adapter, save_merged
from openrag.answer.backend_types import BackendOptions
from openrag.answer.backends import BACKENDS, backend_options
from openrag.model.experts import MoEAdapter, MoEConfig, moe_adapters
from openrag.model.loading import load_pretrained
from openrag.vllm import ARCHITECTURE
from openrag.vllm.experts import GatedExperts
from openrag.vllm.folder import INFO_FILE, vllm_folder

from .conftest import make_tiny_llama_for

IDS = torch.tensor([[5, 9, 3, 17, 8, 2, 30, 41], [12, 7, 7, 1, 45, 50, 53, 2]])


# -- the experts: GatedExperts computes MoEAdapter's term --------------------------------------------------

def _trained_adapter(hidden: int, config: MoEConfig, seed: int = 0) -> MoEAdapter:
    torch.manual_seed(seed)
    adapter = MoEAdapter(hidden, config).eval()
    for expert in adapter.experts.values():  # adapter_up starts at zero: give every expert a term of its own
        torch.nn.init.normal_(expert.adapter_up.weight, std=0.5)
    return adapter


@pytest.mark.parametrize("num_experts,topk", [(8, 2), (4, 1), (3, 3)])
def test_gated_experts_compute_the_adapters_term(num_experts, topk):
    config = MoEConfig(num_experts=num_experts, topk=topk, adapter_dim=6, moe_scaling=0.25)
    reference = _trained_adapter(16, config)
    gated = GatedExperts(16, config)
    assert gated.load_weights(reference.state_dict().items()) == {"router", "down", "up"}
    x, y = torch.randn(3, 7, 16), torch.randn(3, 7, 16)  # [B, T, D]
    with torch.no_grad():
        expected = reference(x, y)
        got = gated(x, y)
        flat = gated(x.view(-1, 16), y.view(-1, 16))  # vLLM passes [N, D]
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert torch.allclose(flat.view_as(expected), expected, atol=1e-6)


def test_gated_experts_load_in_parts_and_report_what_is_missing():
    """vLLM streams weights file by file: a layer's experts may come in two calls."""
    config = MoEConfig(num_experts=4, topk=2, adapter_dim=6, moe_scaling=0.25)
    reference = _trained_adapter(16, config)
    state = reference.state_dict()
    gated = GatedExperts(16, config)
    first = {k: v for k, v in state.items() if "expert_3.adapter_up" not in k}
    assert gated.load_weights(first.items()) == {"router", "down"}  # `up` not yet: vLLM would report it
    assert gated.load_weights([(k, v) for k, v in state.items() if k not in first]) == {"router", "down", "up"}
    x, y = torch.randn(5, 16), torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(gated(x, y), reference(x, y), atol=1e-6)
    with pytest.raises(ValueError, match="expert_4"):
        gated.load_weights([("experts.expert_4.adapter_up.weight", torch.zeros(16, 6))])
    with pytest.raises(ValueError, match=r"shape \[16, 5\], expected \[16, 6\]"):
        gated.load_weights([("experts.expert_0.adapter_up.weight", torch.zeros(16, 5))])


# -- the folder ------------------------------------------------------------------------------------------

def _logits(folder) -> torch.Tensor:
    model, _ = load_model(str(folder), device="cpu")
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def tiny_adapter(smollm2_tokenizer, tmp_path_factory):
    """A tiny random Llama base (the real tokenizer, no reflection tokens) and an adapter checkpoint over it:
    reflection-token rows, 4 experts (top-2) with non-zero up projections, a recorded prompt format."""
    root = tmp_path_factory.mktemp("vllm_adapter")
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    model = make_tiny_llama_for(tokenizer, max_position_embeddings=512)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    num_base_tokens = len(tokenizer)
    add_reflection_tokens(model, tokenizer)
    inject_moe(model, num_experts=4, topk=2, adapter_dim=8, moe_scaling=0.25)
    torch.manual_seed(1)
    with torch.no_grad():
        for adapter in moe_adapters(model):
            for expert in adapter.experts.values():
                torch.nn.init.normal_(expert.adapter_up.weight, std=0.5)
        model.get_input_embeddings().weight[num_base_tokens:].normal_()
    save_adapter(model.eval(), tokenizer, root / "adapter", base_model=str(root / "base"), num_base_tokens=num_base_tokens,
                 prompt_format="training")
    return root


def test_adapter_folder_computes_the_adapters_logits(tiny_adapter, tmp_path):
    folder = vllm_folder(str(tiny_adapter / "adapter"), dtype="float32", output_dir=tmp_path / "vllm")
    assert folder.path == tmp_path / "vllm" and folder.prompt_format == "training" and not folder.untrained_tokens
    config = json.loads((folder.path / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["model_type"] == "llama"
    assert (config["num_experts"], config["topk"], config["adapter_dim"], config["moe_scaling"]) == (4, 2, 8, 0.25)
    expected = load_pretrained(str(tiny_adapter / "adapter"), device="cpu").model(input_ids=IDS).logits.detach()
    got = _logits(folder.path)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_folder_is_written_once_per_source_and_dtype(tiny_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRAG_CACHE", str(tmp_path / "cache"))
    adapter = tiny_adapter / "adapter"
    first = vllm_folder(str(adapter), dtype="float32")
    assert first.path.parent == tmp_path / "cache" / "vllm" and first.path.name.startswith("adapter-")
    stamp = (first.path / INFO_FILE).stat().st_mtime_ns
    assert vllm_folder(str(adapter), dtype="float32").path == first.path
    assert (first.path / INFO_FILE).stat().st_mtime_ns == stamp  # reused, not rewritten
    assert vllm_folder(first.path).path == first.path  # a written folder is loadable as it is
    assert vllm_folder(str(adapter), dtype="bfloat16").path != first.path
    config = adapter / "openrag_config.json"
    config.write_text(config.read_text())  # a changed checkpoint (same bytes, new time) gets a new folder
    os.utime(config, ns=(stamp + 10**9, stamp + 10**9))
    assert vllm_folder(str(adapter), dtype="float32").path != first.path
    assert not list((tmp_path / "cache" / "vllm").glob(".*tmp*"))  # no half-written folder left


def test_merged_folder_links_its_weights_and_indexes_the_experts(tiny_adapter, tmp_path):
    """A merged checkpoint as the released ones come: a private model type with auto_map, an index over the
    dense shard that does not name the experts' file. The folder links the weights and fixes both."""
    merged = tmp_path / "merged"
    model, tokenizer = load_pretrained(str(tiny_adapter / "adapter"), device="cpu").pair
    save_merged(model, tokenizer, merged)
    config = json.loads((merged / "config.json").read_text())
    config.update(model_type="openrag_llama", auto_map={"AutoModelForCausalLM": "modeling_openrag.OpenRAGForCausalLM"})
    (merged / "config.json").write_text(json.dumps(config))
    from safetensors import safe_open

    with safe_open(merged / "model.safetensors", framework="pt") as f:
        dense_keys = list(f.keys())
    (merged / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(dense_keys, "model.safetensors")}))

    folder = vllm_folder(str(merged), output_dir=tmp_path / "vllm")
    written = json.loads((folder.path / "config.json").read_text())
    assert written["architectures"] == [ARCHITECTURE] and written["model_type"] == "llama" and "auto_map" not in written
    weight_map = json.loads((folder.path / "model.safetensors.index.json").read_text())["weight_map"]
    assert weight_map["model.layers.0.mlp.moe_adapter.router.weight"] == "moe_adapter.safetensors"
    assert set(dense_keys) <= set(weight_map)
    for name in ("model.safetensors", "moe_adapter.safetensors"):  # linked, not copied
        assert os.path.samefile(folder.path / name, merged / name)
    expected = model(input_ids=IDS).logits.detach()
    assert torch.allclose(_logits(folder.path), expected, atol=1e-5)


def test_dense_folder_with_the_tokens_is_used_as_it_is(tiny_pair, tmp_path):
    model, tokenizer = tiny_pair
    model.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    folder = vllm_folder(str(tmp_path / "dense"))
    assert folder.path == tmp_path / "dense" and not folder.untrained_tokens


def test_folder_without_the_tokens_gets_the_ones_the_torch_backend_adds(tiny_adapter, tmp_path):
    from openrag import OpenRAG

    base = tiny_adapter / "base"
    folder = vllm_folder(str(base), dtype="float32", output_dir=tmp_path / "vllm")
    assert folder.untrained_tokens
    rag = OpenRAG.from_pretrained(str(base), device="cpu")
    assert rag.notes and "no reflection tokens" in rag.notes[0]
    expected = rag.model(input_ids=IDS).logits.detach()
    assert torch.allclose(_logits(folder.path), expected, atol=1e-5)


def test_experts_on_another_family_are_refused(tmp_path):
    from openrag.vllm.folder import _name_architecture

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen2", "num_experts": 8}))
    with pytest.raises(ValueError, match="--backend torch"):
        _name_architecture(path)


@pytest.mark.slow
def test_bundled_default_folder_computes_the_bundled_models_logits():
    """The folder the vLLM backend loads for `default`: the bundled adapter merged over SmolLM2, in float32."""
    from openrag.answer.prompts import question_prompt

    folder = vllm_folder("default", dtype="float32")
    assert folder.prompt_format == "training"
    loaded = load_pretrained("default", device="cpu")
    ids = loaded.tokenizer(question_prompt("hotpotqa", "Who directed Kiss and Tell?", None, "training"), return_tensors="pt").input_ids
    with torch.no_grad():
        expected = loaded.model(input_ids=ids).logits
        model, _ = load_model(str(folder.path), device="cpu")
        got = model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert got[0, -1].argmax() == expected[0, -1].argmax()


# -- the backend option and its flags ---------------------------------------------------------------------

@pytest.mark.parametrize("command", ["ask", "eval", "serve"])
def test_backend_flags_on_each_command(command):
    from openrag.cli import build_parser

    argv = {"ask": ["ask", "q"], "eval": ["eval", "--task", "hotpotqa"], "serve": ["serve"]}[command]
    parse = build_parser(with_flags=[command]).parse_args
    options = backend_options(parse([*argv, "--backend", "vllm", "--tensor_parallel_size", "2", "--kv_cache_gib", "4"]), batches=True)
    assert (options.backend, options.tensor_parallel_size, options.kv_cache_gib) == ("vllm", 2, 4.0)
    assert backend_options(parse([*argv, "--backend", "torch"]), batches=True) == BackendOptions()
    with pytest.raises(SystemExit):
        parse([*argv, "--backend", "onnx"])  # choices from the registry
    with pytest.raises(ValueError, match="add --backend vllm"):
        backend_options(parse([*argv, "--backend", "torch", "--tensor_parallel_size", "2"]), batches=True)


@pytest.mark.parametrize("installed", [False, True])
def test_auto_backend_is_vllm_for_batches_where_installed(monkeypatch, installed):
    from openrag.answer import backends
    from openrag.cli import build_parser

    monkeypatch.setattr(backends, "vllm_installed", lambda: installed)
    args = build_parser(with_flags=["ask"]).parse_args(["ask", "q"])
    assert args.backend == "auto"
    assert backend_options(args, batches=True).backend == ("vllm" if installed else "torch")
    assert backend_options(args, batches=False).backend == "torch"  # one question: vLLM's start costs more
    given = build_parser(with_flags=["ask"]).parse_args(["ask", "q", "--enforce_eager"])
    assert backend_options(given, batches=False).backend == "vllm"  # a vLLM setting asks for vLLM


def test_auto_backend_of_each_command(monkeypatch):
    from openrag.answer import backends
    from openrag.cli import build_parser
    from openrag.commands.eval import _request

    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    parse = build_parser(with_flags=["eval"]).parse_args
    assert _request(parse(["eval", "--task", "hotpotqa"])).backend.backend == "vllm"
    assert _request(parse(["eval", "--task", "hotpotqa", "--baseline", "closed_book"])).backend.backend == "torch"


def test_vllm_installed_is_false_without_vllm():
    from importlib.util import find_spec

    from openrag.answer.backends import vllm_installed

    if find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    assert not vllm_installed()


def test_backend_registry_and_eval_settings():
    from openrag.cli import build_parser
    from openrag.commands.eval import _request

    assert tuple(BACKENDS) == ("torch", "vllm")
    args = build_parser(with_flags=["eval"]).parse_args(["eval", "--task", "hotpotqa", "--backend", "vllm"])
    req = _request(args)
    assert req.backend.backend == "vllm" and req.settings["backend"] == "vllm"  # a resume must match it
    torch_req = _request(build_parser(with_flags=["eval"]).parse_args(["eval", "--task", "hotpotqa", "--backend", "torch"]))
    assert "backend" not in torch_req.settings  # older runs resume as they were (auto picks vllm where it is installed)
    with pytest.raises(ValueError, match="drop --backend vllm"):
        _request(build_parser(with_flags=["eval"]).parse_args(["eval", "--task", "hotpotqa", "--baseline", "closed_book", "--backend", "vllm"]))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_says_what_to_install():
    from openrag import OpenRAG

    with pytest.raises(ImportError, match=r"openrag\[vllm\]"):
        OpenRAG.from_pretrained("default", backend="vllm")
