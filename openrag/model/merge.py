"""``openrag merge``: fold a training checkpoint's LoRA into its (unquantised) base and keep the experts
as modules, writing the merged layout (docs/method.md section 1.2) that ``openrag.load_model`` and
``openrag eval`` load.

Two checkpoint layouts are understood: ours (``openrag_config.json``: expert settings, base, LoRA flag)
and the released trainer's (``adapter_model/`` PEFT LoRA + ``moe_model.bin``, expert settings from a
``config.json`` beside them). Expert settings always come from the checkpoint, never from defaults.

Memory: the merged model once, plus the LoRA and the embeddings in float32 and one layer's experts as read. The
base loads in the dtype to be saved (its own by default), the experts are read layer by layer, and what the adapter
adds to base weights is summed in float32 one matrix at a time (BENCHMARKS.md: a 7B-shaped merge).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..outputs import check_output_path, output_lock
from .experts import inject_moe
from .layouts import (
    ADAPTER_CONFIG,
    MERGED_MOE_WEIGHTS,
    RELEASED_LORA_DIR,
    RELEASED_MOE_FILE,
    AdapterConfig,
    find_checkpoint,
    load_moe_state_dict,
    read_released_moe_bin,
    released_training_moe_config,
    save_merged,
)
from .loading import config_dtype, embeddings_to_float32, load_adapter, load_model, merge_lora, read_config, read_tokenizer, resolve_folder
from .reflection import add_reflection_tokens

log = logging.getLogger(__name__)


def merge(model_path: str | Path, base_model: str | None = None, output_dir: str | Path | None = None, dtype: str = "auto") -> Path:
    """Write the merged model of the checkpoint in ``model_path`` (default output: ``MODEL_PATH/merged``), a new or
    empty folder: it appears whole, or not at all."""
    folder = find_checkpoint(model_path)
    log.info("merging %s", folder)
    out = _new_folder(Path(output_dir) if output_dir else Path(model_path).expanduser() / "merged")
    if (folder / ADAPTER_CONFIG).is_file():
        base_name = base_model or _recorded_base(folder)
        model, tokenizer = load_adapter(folder, _save_dtype(dtype, base_name), "cpu", base_model=base_name).pair
    else:
        if base_model is None:
            raise ValueError(f"{folder} is a released-layout checkpoint, which does not name its base: pass --base_model")
        model, tokenizer = _load_official(folder, base_model, _save_dtype(dtype, base_model))
    with output_lock(out, "openrag merge"):
        _new_folder(out)  # again, now that no other merge can be writing it
        for stale in out.parent.glob(f".{out.name}.tmp*"):  # left by a merge that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            save_merged(model, tokenizer, tmp)
            tmp.replace(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _new_folder(out: Path) -> Path:
    """``out``, checked before the work: a folder that holds files (an earlier merge, the base itself) is never
    written into."""
    out = check_output_path(out, "--output_dir", folder=True)
    if out.is_dir() and any(out.iterdir()):
        earlier = (out / MERGED_MOE_WEIGHTS).is_file()  # an Open-RAG merge; a dense folder may be a base, never offered for deletion
        raise FileExistsError(f"--output_dir {out} already holds " + ("an earlier merge; delete it to merge again, or give a new folder"
                              if earlier else "files; give a new folder for the merged model"))
    return out


def _recorded_base(folder: Path) -> str:
    """The base an adapter checkpoint names, checked to be there (training records its path, which may have moved)."""
    name = AdapterConfig.read(folder).base_model
    try:
        resolve_folder(name)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{folder} was trained on {name}, which cannot be found ({err}); pass --base_model, "
                                "the folder or hub name of that base") from None
    return name


def _save_dtype(dtype: str, base_name: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    return config_dtype(read_config(resolve_folder(base_name))) or torch.float32


def _load_official(folder: Path, base_model: str, dtype: torch.dtype):
    """The released layout: LoRA over the dense base first (its keys name the dense ``mlp.gate_proj``),
    then the experts; in ``dtype``, what is added to the base summed in float32 (as :func:`load_adapter` does)."""
    moe = released_training_moe_config(folder)
    model, tokenizer = load_model(base_model, dtype=dtype, device="cpu")
    embeddings_to_float32(model)
    if any(folder.glob("tokenizer*")):
        tokenizer = read_tokenizer(folder)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    else:
        add_reflection_tokens(model, tokenizer)
    if (folder / RELEASED_LORA_DIR).is_dir():
        model = merge_lora(model, folder / RELEASED_LORA_DIR)
    inject_moe(model, moe.num_experts, moe.topk, moe.adapter_dim, moe.moe_scaling)
    load_moe_state_dict(model, read_released_moe_bin(folder / RELEASED_MOE_FILE), str(folder / RELEASED_MOE_FILE))
    return model.to(dtype), tokenizer
