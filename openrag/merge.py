"""``openrag merge``: fold a training checkpoint's LoRA into its (unquantised) base and keep the experts
as modules, writing the merged layout of SPEC section 1 that ``openrag.load_model`` and ``openrag eval`` load.

Two checkpoint layouts are understood: ours (``openrag_config.json``: expert settings, base, LoRA flag)
and the released trainer's (``adapter_model/`` PEFT LoRA + ``moe_model.bin``, expert settings from a
``config.json`` beside them). Expert settings always come from the checkpoint, never from defaults.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from .checkpoints import ADAPTER_CONFIG, CheckpointError, load_moe_state_dict, read_released_moe_bin, save_merged
from .loading import _load_adapter, _read_config, load_model, resolve_folder
from .moe import inject_moe
from .reflection import add_reflection_tokens

log = logging.getLogger(__name__)

OFFICIAL_LORA_DIR = "adapter_model"
OFFICIAL_MOE_FILE = "moe_model.bin"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def _is_checkpoint(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() or (folder / OFFICIAL_MOE_FILE).is_file()


def find_checkpoint(model_path: str | Path) -> Path:
    """The checkpoint in ``model_path``: the folder itself, else its newest ``checkpoint-N``."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {model_path}; give a training output folder or one of its checkpoint-N folders")
    if _is_checkpoint(folder):
        return folder
    steps = sorted(
        (int(m.group(1)), sub) for sub in folder.iterdir() if (m := _CHECKPOINT_DIR.match(sub.name)) and _is_checkpoint(sub)
    )
    if not steps:
        raise FileNotFoundError(f"{folder} holds no training checkpoint ({ADAPTER_CONFIG}, or {OFFICIAL_MOE_FILE} with {OFFICIAL_LORA_DIR}/)")
    log.info("merging the newest checkpoint, %s", steps[-1][1])
    return steps[-1][1]


def merge(model_path: str | Path, base_model: str | None = None, output_dir: str | Path | None = None, dtype: str = "auto") -> Path:
    """Write the merged model of the checkpoint in ``model_path`` (default output: ``MODEL_PATH/merged``)."""
    folder = find_checkpoint(model_path)
    out = Path(output_dir) if output_dir else Path(model_path).expanduser() / "merged"
    if (folder / ADAPTER_CONFIG).is_file():
        model, tokenizer = _load_adapter(folder, torch.float32, "cpu", base_model=base_model)
        base_name = base_model or json.loads((folder / ADAPTER_CONFIG).read_text())["base_model"]
    else:
        if base_model is None:
            raise ValueError(f"{folder} is a released-layout checkpoint, which does not name its base: pass --base_model")
        model, tokenizer = _load_official(folder, base_model)
        base_name = base_model
    model.to(_save_dtype(dtype, base_name))
    save_merged(model, tokenizer, out)
    return out


def _save_dtype(dtype: str, base_name: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    config = _read_config(resolve_folder(base_name))
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(found, str):
        found = getattr(torch, found, None)
    return found if isinstance(found, torch.dtype) else torch.float32


def _official_moe_config(folder: Path) -> dict:
    for candidate in (folder / "config.json", folder.parent / "config.json"):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            if all(k in data for k in ("num_experts", "topk", "adapter_dim", "moe_scaling")):
                return data
    raise CheckpointError(
        f"{folder} does not record its expert settings: put a config.json with num_experts, topk, adapter_dim "
        "and moe_scaling beside moe_model.bin (the released training wrote them in its model config)"
    )


def _load_official(folder: Path, base_model: str):
    """The released layout: LoRA over the dense base first (its keys name the dense ``mlp.gate_proj``),
    then the experts."""
    from transformers import AutoTokenizer

    moe = _official_moe_config(folder)
    model, tokenizer = load_model(base_model, dtype=torch.float32, device="cpu")
    if any(folder.glob("tokenizer*")):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    else:
        add_reflection_tokens(model, tokenizer)
    if (folder / OFFICIAL_LORA_DIR).is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder / OFFICIAL_LORA_DIR)).merge_and_unload()
    inject_moe(model, int(moe["num_experts"]), int(moe["topk"]), int(moe["adapter_dim"]), float(moe["moe_scaling"]))
    load_moe_state_dict(model, read_released_moe_bin(folder / OFFICIAL_MOE_FILE), str(folder / OFFICIAL_MOE_FILE))
    return model, tokenizer
