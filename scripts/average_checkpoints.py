"""Average adapter checkpoints of one run family (a "model soup") into a new adapter folder.

    python scripts/average_checkpoints.py OUT CKPT [CKPT ...]

Experts, routers and new token rows are averaged tensor by tensor. The LoRA is averaged exactly: the mean
of k updates B_i A_i (each scaled alpha / r) is one LoRA of rank k * r whose A stacks the A_i and whose B
stacks the B_i / k, with alpha k * alpha so the scale stays alpha / r. Tokenizer and settings come from the
first checkpoint; every checkpoint must have the same tensors and shapes. The output loads like any
adapter checkpoint (``--model_name OUT``) and exports with ``scripts/export_bundled.py OUT``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from openrag.model.layouts import ADAPTER_CONFIG, ADAPTER_WEIGHTS

LORA_DIR, LORA_CONFIG, LORA_WEIGHTS = "lora", "adapter_config.json", "adapter_model.safetensors"
KEEP = (ADAPTER_CONFIG, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def same_keys(parts: list[dict[str, torch.Tensor]], where: list[Path]) -> None:
    for part, folder in zip(parts[1:], where[1:]):
        if part.keys() != parts[0].keys() or any(part[k].shape != parts[0][k].shape for k in part):
            sys.exit(f"{folder} does not have the tensors of {where[0]}: average checkpoints of one architecture only")


def average_tensors(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([p[k].float() for p in parts]).mean(0) for k in parts[0]}


def stack_lora(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """k LoRAs of rank r -> one of rank k r whose update B A is the mean of the k updates."""
    k = len(parts)
    out = {}
    for key in parts[0]:
        if ".lora_A." in key:  # A: (r, in) -> (k r, in)
            out[key] = torch.cat([p[key].float() for p in parts], dim=0)
        elif ".lora_B." in key:  # B: (out, r) -> (out, k r)
            out[key] = torch.cat([p[key].float() / k for p in parts], dim=1)
        else:
            sys.exit(f"unexpected LoRA tensor {key}: only lora_A / lora_B weights can be averaged")
    return out


def main(out: str, checkpoints: list[str]) -> None:
    folders = [Path(c) for c in checkpoints]
    for folder in folders:
        if not (folder / ADAPTER_CONFIG).is_file():
            sys.exit(f"{folder} is not an openrag adapter checkpoint (no {ADAPTER_CONFIG})")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (folders[0] / name).is_file():
            shutil.copy2(folders[0] / name, target / name)
    adapters = [load_file(f / ADAPTER_WEIGHTS) for f in folders]
    same_keys(adapters, folders)
    save_file(average_tensors(adapters), target / ADAPTER_WEIGHTS)
    with_lora = [(f / LORA_DIR).is_dir() for f in folders]
    if any(with_lora):
        if not all(with_lora):
            sys.exit("some checkpoints have a LoRA and some do not: average checkpoints of one architecture only")
        configs = [json.loads((f / LORA_DIR / LORA_CONFIG).read_text()) for f in folders]
        if len({(c["r"], c["lora_alpha"]) for c in configs}) != 1:
            sys.exit("the LoRAs differ in rank or alpha: average checkpoints of one run family only")
        loras = [load_file(f / LORA_DIR / LORA_WEIGHTS) for f in folders]
        same_keys(loras, folders)
        (target / LORA_DIR).mkdir(exist_ok=True)
        save_file(stack_lora(loras), target / LORA_DIR / LORA_WEIGHTS)
        config = {**configs[0], "r": configs[0]["r"] * len(folders), "lora_alpha": configs[0]["lora_alpha"] * len(folders)}
        (target / LORA_DIR / LORA_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    print(f"averaged {len(folders)} checkpoints into {target}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
