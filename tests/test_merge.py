"""openrag merge: the merged checkpoint computes what the trained (unmerged) model computed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from openrag import CheckpointError, load_model
from openrag.model.layouts import find_checkpoint
from openrag.model.merge import merge

from .train_helpers import run_train, train_argv, write_base, write_dataset

IDS = torch.tensor([[5, 9, 3, 17, 8, 2, 30, 41], [12, 7, 7, 1, 45, 50, 53, 2]])  # some are reflection tokens (checked below)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps with LoRA on every released target (embed_tokens and lm_head included), non-default
    expert settings (so that merge must read them from the checkpoint), and the released layout too."""
    root = tmp_path_factory.mktemp("merge")
    base, data, out = write_base(root / "base"), write_dataset(root / "data.jsonl"), root / "out"
    argv = train_argv(base, data, out, "--max_steps", "4", "--save_steps", "2", "--save_official_layout", "True", "--learning_rate", "2e-2")
    trainer = run_train(argv)
    setup = trainer.setup
    assert IDS.max() < len(setup.tokenizer) and (IDS >= setup.num_base_tokens).any()
    model = setup.model.eval()
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    return base, out, logits


def _logits(folder):
    model, _ = load_model(str(folder), device="cpu")
    with torch.no_grad():
        return model(input_ids=IDS).logits, model


def test_merged_logits_equal_unmerged(trained, tmp_path):
    base, out, expected = trained
    merged = merge(out, base_model=str(base), output_dir=tmp_path / "merged")
    logits, model = _logits(merged)
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    config = json.loads((merged / "config.json").read_text())
    assert (config["num_experts"], config["topk"], config["adapter_dim"], config["moe_scaling"]) == (4, 2, 8, 0.25)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_merge_command_default_output_is_model_path_merged(trained, tmp_path):
    from openrag.cli import main

    base, out, expected = trained
    run_dir = tmp_path / "run"
    shutil.copytree(out / "checkpoint-4", run_dir / "checkpoint-4")
    shutil.copytree(out / "checkpoint-2", run_dir / "checkpoint-2")
    with pytest.raises(SystemExit) as done:
        main(["merge", "--base_model", str(base), "--model_path", str(run_dir)])  # no top-level save: the newest checkpoint
    assert done.value.code == 0
    logits, _ = _logits(run_dir / "merged")
    assert torch.allclose(logits, expected, atol=1e-5)


def test_merge_released_layout(trained, tmp_path):
    """adapter_model/ + moe_model.bin (+ the expert settings in a config.json), as the released trainer left them."""
    base, out, expected = trained
    released = tmp_path / "released"
    shutil.copytree(out / "adapter_model", released / "adapter_model")
    shutil.copy(out / "moe_model.bin", released)
    for tokenizer_file in out.glob("tokenizer*"):
        shutil.copy(tokenizer_file, released)
    settings = {"num_experts": 4, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25}
    (released / "config.json").write_text(json.dumps(settings))
    merged = merge(released, base_model=str(base))
    assert merged == released / "merged"
    logits, _ = _logits(merged)
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()


def test_merge_errors_say_what_is_missing(trained, tmp_path):
    base, out, _ = trained
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        find_checkpoint(tmp_path / "empty")
    released = tmp_path / "released"
    released.mkdir()
    shutil.copy(out / "moe_model.bin", released)
    with pytest.raises(CheckpointError, match="num_experts"):
        merge(released, base_model=str(base))
    with pytest.raises(ValueError, match="--base_model"):
        merge(released)


def test_merge_refuses_an_output_folder_that_holds_files(trained, tmp_path):
    """Given the base's own folder as the output (a slip of the flags), merging would overwrite the base."""
    base, out, _ = trained
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    with pytest.raises(FileExistsError, match="--output_dir .* already holds files; give a new folder") as refused:
        merge(out, base_model=str(base), output_dir=base)
    assert "delete" not in str(refused.value)  # never suggest deleting the base
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    assert (merge(out, base_model=str(base), output_dir=tmp_path / "empty") / "config.json").is_file()
    with pytest.raises(FileExistsError, match="already holds an earlier merge; delete it to merge again"):
        merge(out, base_model=str(base), output_dir=tmp_path / "empty")


def test_an_interrupted_merge_leaves_no_half_written_model(trained, tmp_path, monkeypatch):
    import openrag.model.layouts as layouts

    base, out, _ = trained

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layouts, "save_file", disk_full)  # the expert tensors, written after the dense weights
    with pytest.raises(OSError, match="No space left"):
        merge(out, base_model=str(base), output_dir=tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / ".merged.tmp99999").mkdir()  # what a merge killed outright (SIGKILL) leaves
    (tmp_path / ".merged.tmp99999" / "model.safetensors").write_bytes(b"partial")
    merge(out, base_model=str(base), output_dir=tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_merge_says_to_pass_base_model_when_the_recorded_base_is_gone(trained, tmp_path):
    base, out, _ = trained
    moved = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint-4", moved)
    config = json.loads((moved / "openrag_config.json").read_text())
    config["base_model"] = str(tmp_path / "base-moved-away")
    (moved / "openrag_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="base-moved-away.*--base_model"):
        merge(moved)
    assert not (moved / "merged").exists()


@pytest.mark.parametrize("config_text, said", [
    ('{"num_experts": 4, "topk": 2,', "config.json:1: not valid JSON"),
    ('{"num_experts": null, "topk": 2, "adapter_dim": 8, "moe_scaling": 0.25}', "'num_experts' is None, not a whole number"),
    ('{"num_experts": 4, "topk": "2", "adapter_dim": 8, "moe_scaling": 0.25}', "'topk' is '2', not a whole number"),
    ('{"num_experts": 4, "topk": 5, "adapter_dim": 8, "moe_scaling": 0.25}', "topk must be between 1 and num_experts=4"),
])
def test_merge_names_the_file_and_field_of_bad_expert_settings(trained, tmp_path, config_text, said):
    base, out, _ = trained
    released = tmp_path / "released"
    shutil.copytree(out / "adapter_model", released / "adapter_model")
    shutil.copy(out / "moe_model.bin", released)
    (released / "config.json").write_text(config_text)
    with pytest.raises(ValueError, match=f"{released / 'config.json'}.*{said}" if "JSON" not in said else said):
        merge(released, base_model=str(base))
    assert not (released / "merged").exists()


@pytest.mark.parametrize("moe, said", [
    ({"topk": 2, "adapter_dim": 8, "moe_scaling": 0.25}, "'num_experts' is None, not a whole number"),
    ({"num_experts": 4, "topk": 2, "adapter_dim": 8, "moe_scaling": None}, "'moe_scaling' is None, not a finite number"),
])
def test_loading_names_a_bad_expert_entry_in_the_adapter_config(trained, tmp_path, moe, said):
    _, out, _ = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out / "checkpoint-4", ckpt)
    config = json.loads((ckpt / "openrag_config.json").read_text())
    (ckpt / "openrag_config.json").write_text(json.dumps({**config, "moe": moe}))
    with pytest.raises(CheckpointError, match=f"openrag_config.json: expert setting {said}"):
        load_model(str(ckpt), device="cpu")


def test_a_bf16_base_merges_in_float32_rounded_once(tmp_path):
    """The merge holds the model in bf16, yet each merged weight is (base + what the adapter adds) summed in float32
    and rounded once, as merging a float32 copy would give: computed here from the saved files."""
    from safetensors.torch import load_file

    from openrag.model.layouts import NEW_EMBED_KEY, NEW_LM_HEAD_KEY

    from .conftest import make_tiny_llama_for
    from .train_helpers import word_tokenizer

    base, out = tmp_path / "base", tmp_path / "out"
    tokenizer = word_tokenizer()
    make_tiny_llama_for(tokenizer).to(torch.bfloat16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run_train(train_argv(base, write_dataset(tmp_path / "data.jsonl"), out, "--max_steps", "2", "--learning_rate", "2e-2"))
    merged = load_file(str(merge(out, output_dir=tmp_path / "merged") / "model.safetensors"))
    base_weights = {k: v.float() for k, v in load_file(str(base / "model.safetensors")).items()}
    rows = load_file(str(out / "adapter.safetensors"))
    base_weights["model.embed_tokens.weight"] = torch.cat([base_weights["model.embed_tokens.weight"], rows[NEW_EMBED_KEY]])
    base_weights["lm_head.weight"] = torch.cat([base_weights["lm_head.weight"], rows[NEW_LM_HEAD_KEY]])
    lora = load_file(str(out / "lora" / "adapter_model.safetensors"))
    settings = json.loads((out / "lora" / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    deltas = {"model.embed_tokens.weight": (lora["base_model.model.model.embed_tokens.lora_embedding_B"]
                                            @ lora["base_model.model.model.embed_tokens.lora_embedding_A"]).T}  # [V, D]
    for key_a in (k for k in lora if k.endswith(".lora_A.weight")):
        name = key_a.removeprefix("base_model.model.").replace(".mlp.dense_mlp.", ".mlp.").replace(".lora_A", "")
        deltas[name] = lora[key_a.replace("lora_A", "lora_B")] @ lora[key_a]  # [out, r] @ [r, in]
    assert len(deltas) == 2 + 2 * 7
    for name, weight in merged.items():
        assert weight.dtype == torch.bfloat16, name
        expected = base_weights[name] + scale * deltas[name] if name in deltas else base_weights[name]
        assert torch.equal(weight, expected.to(torch.bfloat16)), name
