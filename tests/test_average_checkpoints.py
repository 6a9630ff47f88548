"""scripts/average_checkpoints.py: tensors are averaged, and the stacked LoRA's update is the mean update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import load_script

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
EXPERT_KEY = "model.layers.0.mlp.moe_adapter.experts.expert_0.adapter_up.weight"


@pytest.fixture(scope="module")
def average():
    return load_script("average_checkpoints")


def checkpoint(folder: Path, seed: int, r: int = 4, alpha: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {EXPERT_KEY: torch.randn(6, 3, generator=g), A_KEY: torch.randn(r, 5, generator=g), B_KEY: torch.randn(7, r, generator=g)}
    (folder / "lora").mkdir(parents=True)
    (folder / "openrag_config.json").write_text(json.dumps({"format": "openrag-adapter", "lora": True}))
    save_file({EXPERT_KEY: tensors[EXPERT_KEY]}, folder / "adapter.safetensors")
    save_file({A_KEY: tensors[A_KEY], B_KEY: tensors[B_KEY]}, folder / "lora" / "adapter_model.safetensors")
    (folder / "lora" / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "peft_type": "LORA"}))
    return tensors


def test_average_of_three_checkpoints(average, tmp_path):
    parts = [checkpoint(tmp_path / f"c{i}", seed=i) for i in range(3)]
    average.main(str(tmp_path / "soup"), [str(tmp_path / f"c{i}") for i in range(3)])

    experts = load_file(tmp_path / "soup" / "adapter.safetensors")[EXPERT_KEY]
    torch.testing.assert_close(experts, (parts[0][EXPERT_KEY] + parts[1][EXPERT_KEY] + parts[2][EXPERT_KEY]) / 3)

    config = json.loads((tmp_path / "soup" / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (12, 24)
    lora = load_file(tmp_path / "soup" / "lora" / "adapter_model.safetensors")
    soup_update = lora[B_KEY] @ lora[A_KEY] * (config["lora_alpha"] / config["r"])  # [7, 5]
    mean_update = sum(p[B_KEY] @ p[A_KEY] * (8 / 4) for p in parts) / 3
    torch.testing.assert_close(soup_update, mean_update)
    assert json.loads((tmp_path / "soup" / "openrag_config.json").read_text())["format"] == "openrag-adapter"


def test_checkpoints_of_different_shapes_are_refused(average, tmp_path):
    checkpoint(tmp_path / "a", seed=0, r=4)
    checkpoint(tmp_path / "b", seed=1, r=2, alpha=4)
    with pytest.raises(SystemExit, match="differ in rank or alpha"):
        average.main(str(tmp_path / "soup"), [str(tmp_path / "a"), str(tmp_path / "b")])
    assert not (tmp_path / "soup").exists() and not (tmp_path / "soup.tmp").exists()  # nothing half-written


def test_an_existing_output_is_refused(average, tmp_path):
    checkpoint(tmp_path / "a", seed=0)
    checkpoint(tmp_path / "b", seed=1)
    (tmp_path / "soup").mkdir()
    with pytest.raises(SystemExit, match="exists"):
        average.main(str(tmp_path / "soup"), [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="one of the checkpoints"):
        average.main(str(tmp_path / "a"), [str(tmp_path / "a"), str(tmp_path / "b")])
