"""Copy a training checkpoint (adapter layout) into openrag/assets/default, the bundled model, with its
tensors stored in bfloat16 (half the size; they load into float32 parameters on the CPU).

    python scripts/export_bundled.py runs/bundled/ckpt/checkpoint-N
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from openrag.bundled import DEFAULT_MODEL_DIR
from openrag.checkpoints import ADAPTER_CONFIG, ADAPTER_WEIGHTS

KEEP = (ADAPTER_CONFIG, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def main(checkpoint: str) -> None:
    source = Path(checkpoint)
    if not (source / ADAPTER_CONFIG).is_file():
        sys.exit(f"{source} is not an openrag adapter checkpoint (no {ADAPTER_CONFIG})")
    tmp = DEFAULT_MODEL_DIR.with_name(DEFAULT_MODEL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in KEEP:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(source / ADAPTER_WEIGHTS).items()}
    save_file(tensors, tmp / ADAPTER_WEIGHTS)
    shutil.rmtree(DEFAULT_MODEL_DIR, ignore_errors=True)
    tmp.replace(DEFAULT_MODEL_DIR)
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir()) / 2**20
    print(f"exported {source} to {DEFAULT_MODEL_DIR} ({size:.1f} MiB)")


if __name__ == "__main__":
    main(sys.argv[1])
