"""Training checkpoints: our adapter layout on every save (plus, by flag, the released one), and back.

A save holds only what training changed (routers, experts, LoRA, the new token rows) over the named
base, so ``openrag.load_model(checkpoint)`` and ``openrag merge`` read it directly. The Trainer adds its
own optimizer, scheduler, RNG and state files beside them, which is what ``--resume_from_checkpoint`` needs.
"""

from __future__ import annotations

import logging
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
    moe_settings,
    newest_checkpoint,
    read_tensors,
    save_adapter,
    save_released_training,
)
from .setup import TrainableModel

log = logging.getLogger(__name__)


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


def resume_folder(value: str, output_dir: str | Path) -> str:
    """The checkpoint ``--resume_from_checkpoint`` names: a folder, or ``True``/``last`` for the newest one in
    ``output_dir`` whose save finished. A folder whose save did not finish is refused (named, with the fix)."""
    if value.lower() in ("true", "last", "yes"):
        newest = newest_checkpoint(Path(output_dir), save_finished) if Path(output_dir).is_dir() else None
        if newest is None:
            raise CheckpointError(f"--resume_from_checkpoint: no finished checkpoint-N in {output_dir} (a save that wrote "
                                  "all its files); start without --resume_from_checkpoint, or give a checkpoint folder")
        return str(newest)
    if not save_finished(Path(value)):
        raise CheckpointError(f"--resume_from_checkpoint {value}: its save did not finish (files missing or cut short); "
                              "give an earlier checkpoint-N, or True for the newest finished one")
    return value


def save_finished(folder: Path) -> bool:
    """Whether a Trainer save in ``folder`` wrote all its files. The Trainer writes its state file last, but under
    torchrun rank 0 writes it without waiting for the other ranks' RNG files, so those are checked too."""
    import json
    import os

    from transformers.trainer import TRAINER_STATE_NAME

    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return world_size <= 1 or all((folder / f"rng_state_{rank}.pth").is_file() for rank in range(world_size))


@torch.no_grad()
def load_checkpoint(setup: TrainableModel, folder: str | Path) -> None:
    """Put a checkpoint's trained tensors back into the model being trained (to resume a run)."""
    folder = Path(folder)
    config = _read_config(folder)
    _check_fits(setup, config, folder, lora=True)
    _load_tensors(setup, folder, lora=setup.lora)


@torch.no_grad()
def warm_start(setup: TrainableModel, name_or_path: str) -> None:
    """Start a run from a trained adapter checkpoint (``--init_from``): its experts, routers and token
    rows, and its LoRA where this run has the same one; a LoRA the checkpoint lacks starts fresh (zero
    update), so the warm-started model begins as the checkpoint's model."""
    from ..model.loading import resolve_folder

    folder = resolve_folder(name_or_path)
    config = _read_config(folder)
    if config.base_model != setup.base_model:
        raise CheckpointError(f"--init_from {name_or_path} was trained over {config.base_model}, this run trains {setup.base_model}")
    _check_fits(setup, config, folder, lora=config.lora)
    if setup.lora and config.lora:
        _check_same_lora(setup, folder / ADAPTER_LORA_DIR)
    _load_tensors(setup, folder, lora=setup.lora and config.lora)
    log.info("warm start from %s (%s)", folder, "experts, token rows and LoRA" if setup.lora and config.lora else "experts and token rows")


def _read_config(folder: Path) -> AdapterConfig:
    if not (folder / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{folder} is not an openrag training checkpoint (no {ADAPTER_CONFIG})")
    return AdapterConfig.read(folder)


def _check_fits(setup: TrainableModel, config: AdapterConfig, folder: Path, lora: bool) -> None:
    """The checkpoint's token count and expert shapes (and, if ``lora``, its LoRA switch) match this run's."""
    moe = moe_config_of(setup.inner)
    saved = moe_settings(config.moe, str(folder / ADAPTER_CONFIG)) if config.moe else None
    shape = lambda m: {k: v for k, v in m.to_dict().items() if k != "dropout"} if m else None  # dropout may differ between runs
    expected = {
        "num_base_tokens": (config.num_base_tokens, setup.num_base_tokens),
        "experts": (shape(saved), shape(moe)),
    }
    if lora:
        expected["lora"] = (config.lora, setup.lora)
    for what, (found, wanted) in expected.items():
        if found != wanted:
            raise CheckpointError(f"{folder}: {what} is {found} there but {wanted} in this run; use the flags of the original run")


def _check_same_lora(setup: TrainableModel, folder: Path) -> None:
    """A LoRA loaded into this run's LoRA must have its rank, alpha and targets (same shapes, same scale)."""
    import json

    saved = json.loads((folder / "adapter_config.json").read_text())
    ours = setup.model.peft_config["default"]
    for key in ("r", "lora_alpha", "target_modules"):
        found, wanted = saved.get(key), getattr(ours, key)
        if key == "target_modules":
            found, wanted = sorted(found or []), sorted(wanted or [])
        if found != wanted:
            raise CheckpointError(f"{folder}: LoRA {key} is {found} there but {wanted} in this run; use the flags of that run")


def _load_tensors(setup: TrainableModel, folder: Path, lora: bool) -> None:
    where = str(folder / ADAPTER_WEIGHTS)
    tensors = read_tensors([folder / ADAPTER_WEIGHTS], keep=lambda key: True)
    load_moe_state_dict(setup.inner, {k: v for k, v in tensors.items() if ".moe_adapter." in k}, where)
    load_new_token_rows(setup.inner, {k: v for k, v in tensors.items() if k.startswith("new_token_rows.")}, setup.num_base_tokens, where)
    if lora:
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

