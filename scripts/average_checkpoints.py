"""Average adapter checkpoints of one run family (a "model soup") into a new adapter folder.

    python scripts/average_checkpoints.py OUT CKPT CKPT [CKPT ...]

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

from openrag.model.layouts import ADAPTER_CONFIG, ADAPTER_LORA_DIR, ADAPTER_TEXT_FILES, ADAPTER_WEIGHTS

LORA_CONFIG, LORA_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # PEFT's file names


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


def read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        sys.exit(f"{path} is missing: average complete adapter checkpoints only")
    return load_file(path)


def averaged_lora(folders: list[Path]) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(PEFT config, tensors) of the averaged LoRA, or None when no checkpoint has one."""
    with_lora = [(f / ADAPTER_LORA_DIR).is_dir() for f in folders]
    if not any(with_lora):
        return None
    if not all(with_lora):
        sys.exit("some checkpoints have a LoRA and some do not: average checkpoints of one architecture only")
    for f in folders:
        if not (f / ADAPTER_LORA_DIR / LORA_CONFIG).is_file():
            sys.exit(f"{f / ADAPTER_LORA_DIR / LORA_CONFIG} is missing: average complete adapter checkpoints only")
    configs = [json.loads((f / ADAPTER_LORA_DIR / LORA_CONFIG).read_text()) for f in folders]
    if len({(c["r"], c["lora_alpha"]) for c in configs}) != 1:
        sys.exit("the LoRAs differ in rank or alpha: average checkpoints of one run family only")
    loras = [read(f / ADAPTER_LORA_DIR / LORA_WEIGHTS) for f in folders]
    same_keys(loras, folders)
    k = len(folders)
    return {**configs[0], "r": configs[0]["r"] * k, "lora_alpha": configs[0]["lora_alpha"] * k}, stack_lora(loras)


def main(out: str, checkpoints: list[str]) -> None:
    """Everything is read and checked before anything is written; the output appears whole (a renamed folder)."""
    folders, target = [Path(c) for c in checkpoints], Path(out)
    for folder in folders:
        if not (folder / ADAPTER_CONFIG).is_file():
            sys.exit(f"{folder} is not an openrag adapter checkpoint (no {ADAPTER_CONFIG})")
        if folder.resolve() == target.resolve():
            sys.exit(f"{target} is one of the checkpoints: write the average to a new folder")
    if target.exists():
        sys.exit(f"{target} exists: give a new folder for the average")
    adapters = [read(f / ADAPTER_WEIGHTS) for f in folders]
    same_keys(adapters, folders)
    experts, lora = average_tensors(adapters), averaged_lora(folders)

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_TEXT_FILES:
        if (folders[0] / name).is_file():
            shutil.copy2(folders[0] / name, tmp / name)
    save_file(experts, tmp / ADAPTER_WEIGHTS)
    if lora is not None:
        config, tensors = lora
        (tmp / ADAPTER_LORA_DIR).mkdir()
        save_file(tensors, tmp / ADAPTER_LORA_DIR / LORA_WEIGHTS)
        (tmp / ADAPTER_LORA_DIR / LORA_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(target)
    print(f"averaged {len(folders)} checkpoints into {target}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
