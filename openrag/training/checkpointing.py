"""Training checkpoints: our adapter layout on every save (plus, by flag, the released one), and back.

A save holds only what training changed (routers, experts, LoRA, the new token rows) over the named
base, so ``openrag.load_model(checkpoint)`` and ``openrag merge`` read it directly. The Trainer adds its
own optimizer, scheduler, RNG and state files beside them, which is what ``--resume_from_checkpoint`` needs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.experts import moe_config_of
from ..model.layouts import (
    ADAPTER_CONFIG,
    ADAPTER_LORA_DIR,
    ADAPTER_WEIGHTS,
    AdapterConfig,
    CheckpointError,
    load_moe_state_dict,
    load_new_token_rows,
    read_tensors,
    save_adapter,
    save_released_training,
)
from .setup import TrainableModel


def save_checkpoint(setup: TrainableModel, folder: str | Path, state_dict: dict | None = None, official: bool = False) -> Path:
    """Write the adapter layout of the model being trained (``state_dict``: a gathered full state dict
    when the parameters are sharded). ``official`` adds ``adapter_model/`` and ``moe_model.bin``."""
    folder = Path(folder)
    lora_model = setup.model if setup.lora else None
    save_adapter(setup.inner, setup.tokenizer, folder, setup.base_model, setup.num_base_tokens, lora_model=lora_model, state_dict=state_dict,
                 prompt_format="training")
    if official:
        full = state_dict if state_dict is not None else setup.model.state_dict()
        save_released_training(folder, full, lora_model, state_dict)
    return folder


@torch.no_grad()
def load_checkpoint(setup: TrainableModel, folder: str | Path) -> None:
    """Put a checkpoint's trained tensors back into the model being trained (to resume a run)."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{folder} is not an openrag training checkpoint (no {ADAPTER_CONFIG})")
    config = AdapterConfig.read(folder)
    moe = moe_config_of(setup.inner)
    expected = {
        "num_base_tokens": (config.num_base_tokens, setup.num_base_tokens),
        "experts": (config.moe, moe.to_dict() if moe else None),
        "lora": (config.lora, setup.lora),
    }
    for what, (found, wanted) in expected.items():
        if found != wanted:
            raise CheckpointError(f"{folder}: {what} is {found} there but {wanted} in this run; resume with the flags of the original run")
    where = str(folder / ADAPTER_WEIGHTS)
    tensors = read_tensors([folder / ADAPTER_WEIGHTS], keep=lambda key: True)
    load_moe_state_dict(setup.inner, {k: v for k, v in tensors.items() if ".moe_adapter." in k}, where)
    load_new_token_rows(setup.inner, {k: v for k, v in tensors.items() if k.startswith("new_token_rows.")}, setup.num_base_tokens, where)
    if setup.lora:
        _load_lora(setup.model, folder / ADAPTER_LORA_DIR)


def _load_lora(peft_model, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint was written with LoRA but its weights are gone")
    result = set_peft_model_state_dict(peft_model, load_file(str(path)))
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    missing = [k for k in result.missing_keys if "lora_" in k]
    if unexpected or missing:
        key = (unexpected or missing)[0]
        raise CheckpointError(f"{path}: LoRA tensor {key!r} does not fit this run (different --lora_r or --lora_target_modules?)")

