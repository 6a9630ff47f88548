"""``load_model``: one entry point for every checkpoint a user brings (layouts.py names the layouts).

``load_pretrained`` returns the model with what its checkpoint says about it (the prompt format it was
trained with) as an explicit value; ``load_model`` is the ``(model, tokenizer)`` pair of it.

No Python from a checkpoint folder ever runs: every config, tokenizer and model is read with
``trust_remote_code=False`` (an ``auto_map`` naming the folder's own classes is refused, never prompted for).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..localpaths import check_local_or_hub
from . import layouts as ckpt
from .bundled import DEFAULT_NAME, SMOLLM2_NAME, default_model_dir, smollm2_checkpoint
from .experts import inject_moe

log = logging.getLogger(__name__)

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def resolve_folder(name_or_path: str) -> Path:
    """A local folder for a path, ``smollm2``, or a Hugging Face hub name (downloaded when online)."""
    if name_or_path == SMOLLM2_NAME:
        return smollm2_checkpoint()
    if name_or_path == DEFAULT_NAME:
        return default_model_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{name_or_path} is a file; give the checkpoint folder that holds config.json")
    check_local_or_hub(name_or_path, "checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, gated or unknown repository: say which and how to proceed
        raise FileNotFoundError(
            f"cannot fetch {name_or_path!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline, pass a local checkpoint folder instead."
        ) from err


def default_dtype(device: torch.device, config_dtype) -> torch.dtype:
    """float32 on the CPU (the fast path without AVX-512 bf16); the checkpoint's own dtype on GPUs."""
    if device.type == "cpu":
        return torch.float32
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    return config_dtype if isinstance(config_dtype, torch.dtype) else torch.bfloat16


@dataclass
class LoadedModel:
    """A loaded checkpoint: the model, its tokenizer, and what the checkpoint records about how to use it."""

    model: nn.Module
    tokenizer: object
    prompt_format: str | None = None  # the prompts it was trained with ("training"), when recorded; None: unknown

    @property
    def pair(self) -> tuple[nn.Module, object]:
        return self.model, self.tokenizer


def load_pretrained(name_or_path: str = DEFAULT_NAME, dtype: torch.dtype | str | None = None,
                    device: str | torch.device | None = None) -> LoadedModel:
    """Load a dense HF checkpoint, a released/merged Open-RAG checkpoint, an openrag adapter folder,
    ``"smollm2"`` (the bundled base) or ``"default"`` (the bundled trained Open-RAG model), in eval mode."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    folder = resolve_folder(str(name_or_path))
    if (folder / ckpt.ADAPTER_CONFIG).is_file():
        loaded = load_adapter(folder, dtype, device)
    else:
        loaded = LoadedModel(*_load_dense_or_merged(folder, dtype, device))
    loaded.model.eval()
    return loaded


def load_model(name_or_path: str = DEFAULT_NAME, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """Load ``(model, tokenizer)`` from any checkpoint :func:`load_pretrained` reads. The model is in eval mode."""
    return load_pretrained(name_or_path, dtype, device).pair


def read_config(folder: Path):
    from transformers import AutoConfig, LlamaConfig

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; it is not a Hugging Face or openrag checkpoint")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except ValueError:
        # A released config whose model_type only its remote code knows: read it as the Llama it is.
        data = json.loads(config_path.read_text())
        data.pop("auto_map", None)
        data["model_type"] = "llama"
        return LlamaConfig.from_dict(data)


def read_tokenizer(folder: Path):
    """The folder's tokenizer, read without running any code of the folder's own."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ValueError(f"{folder}: its tokenizer is a class of the folder's own Python code (auto_map in "
                         "tokenizer_config.json), and openrag runs no code from a checkpoint; give a folder whose "
                         "tokenizer transformers itself knows") from None


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}


def _load_dense_or_merged(folder: Path, dtype, device):
    from transformers import AutoModelForCausalLM

    config = read_config(folder)
    moe = ckpt.released_moe_config(config)
    files = ckpt.safetensors_files(folder)
    if files:
        found = ckpt.read_tensor_shapes(files)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        expected = _expected_shapes(config)
        ckpt.check_shapes(expected, found, str(folder), optional=tied)
    elif moe is not None:
        raise ckpt.CheckpointError(f"{folder}: the expert weights must be in safetensors files; none found")
    elif not any(folder.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin): "
                                "give the whole checkpoint folder")
    dtype = dtype or default_dtype(device, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))
    quiet = logging.getLogger("transformers.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the expert tensors are "unexpected" to the dense class; we load them below
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, trust_remote_code=False)
    finally:
        quiet.setLevel(level)
    tokenizer = read_tokenizer(folder)
    if moe is not None:
        inject_moe(model, moe.num_experts, moe.topk, moe.adapter_dim, moe.moe_scaling)
        tensors = ckpt.read_tensors(files, keep=lambda k: ".moe_adapter." in k)
        ckpt.load_moe_state_dict(model, tensors, str(folder))
    return model.to(device), tokenizer


def load_adapter(folder: Path, dtype, device, base_model: str | None = None) -> LoadedModel:
    """``base_model``: the base to load under the adapter, if not the one the checkpoint names (moved or renamed)."""
    config = ckpt.AdapterConfig.read(folder)
    model, _ = load_model(base_model or config.base_model, dtype=dtype, device="cpu")
    tokenizer = read_tokenizer(folder)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its tokenizer has the reflection tokens
    if config.moe:  # the same order as training: experts first, then LoRA over the dense projections
        m = ckpt.moe_settings(config.moe, str(folder / ckpt.ADAPTER_CONFIG))
        inject_moe(model, m.num_experts, m.topk, m.adapter_dim, m.moe_scaling, m.dropout)
    tensors = ckpt.read_tensors([folder / ckpt.ADAPTER_WEIGHTS], keep=lambda k: True)
    experts = {k: v for k, v in tensors.items() if ".moe_adapter." in k}
    if config.moe:
        ckpt.load_moe_state_dict(model, experts, str(folder / ckpt.ADAPTER_WEIGHTS))
    rows = {k: v for k, v in tensors.items() if k.startswith("new_token_rows.")}
    ckpt.load_new_token_rows(model, rows, config.num_base_tokens, str(folder / ckpt.ADAPTER_WEIGHTS))
    if config.lora:  # last: a LoRA on embed_tokens/lm_head adds its delta to the new rows just loaded, as in training
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder / ckpt.ADAPTER_LORA_DIR)).merge_and_unload()
    return LoadedModel(model.to(device=device, dtype=dtype or model.dtype), tokenizer, config.prompt_format)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, expert (routers + experts) and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".moe_adapter." in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "experts": experts, "dense": total - experts, "trainable": trainable}
