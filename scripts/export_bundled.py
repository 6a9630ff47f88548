"""Copy a training checkpoint (adapter layout) into openrag/assets/default, the bundled model, with its
tensors (experts, routers, new token rows and the LoRA in ``lora/``, if any) stored in bfloat16 (half the
size; they load into float32 parameters on the CPU).

    python scripts/export_bundled.py runs/bundled/ckpt/checkpoint-N
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from openrag.model.bundled import DEFAULT_MODEL_DIR
from openrag.model.layouts import ADAPTER_CONFIG, ADAPTER_LORA_DIR, ADAPTER_TEXT_FILES, ADAPTER_WEIGHTS

def save_bf16(source: Path, target: Path) -> None:
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(source).items()}, target)


def main(checkpoint: str) -> None:
    source = Path(checkpoint)
    if not (source / ADAPTER_CONFIG).is_file():
        sys.exit(f"{source} is not an openrag adapter checkpoint (no {ADAPTER_CONFIG})")
    tmp = DEFAULT_MODEL_DIR.with_name(DEFAULT_MODEL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_TEXT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    save_bf16(source / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
    if (source / ADAPTER_LORA_DIR).is_dir():
        (tmp / ADAPTER_LORA_DIR).mkdir()
        for f in (source / ADAPTER_LORA_DIR).iterdir():
            if f.suffix == ".safetensors":
                save_bf16(f, tmp / ADAPTER_LORA_DIR / f.name)
            elif f.suffix == ".json":
                shutil.copy2(f, tmp / ADAPTER_LORA_DIR / f.name)
    shutil.rmtree(DEFAULT_MODEL_DIR, ignore_errors=True)
    tmp.replace(DEFAULT_MODEL_DIR)
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()) / 2**20
    print(f"exported {source} to {DEFAULT_MODEL_DIR} ({size:.1f} MiB)")


if __name__ == "__main__":
    main(sys.argv[1])
