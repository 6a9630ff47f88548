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

from ..bundled_names import DEFAULT_NAME, SMOLLM2_NAME
from ..localpaths import check_local_or_hub
from ..precision import cpu_inference_dtype, dtype_name
from . import layouts as ckpt
from .bundled import default_model_dir, smollm2_checkpoint
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


FLOAT32_MEMORY_SHARE = 0.8  # float32 on the CPU while its weights take at most this share of the memory available


def config_dtype(config) -> torch.dtype | None:
    """The dtype a model config records (``dtype``, or the older ``torch_dtype``; a name or a torch dtype), None if none."""
    return _as_dtype(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))


def _as_dtype(value) -> torch.dtype | None:
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def default_dtype(device: torch.device, recorded, float32_bytes: int | None = None) -> torch.dtype:
    """The checkpoint's own dtype (``recorded``: :func:`config_dtype`'s, or its name) on GPUs. On the CPU the one
    it computes fast in (``precision.cpu_inference_dtype``: bf16 where its products are fast, else float32); float32
    gives way to the checkpoint's own dtype where its weights (``float32_bytes``, when known) would take more than
    FLOAT32_MEMORY_SHARE of the memory available now (a 7B model: bf16 fits a 24 GB machine, float32 does not)."""
    own = _as_dtype(recorded) or torch.bfloat16
    if device.type != "cpu":
        return own
    fast, why = cpu_inference_dtype()
    if fast == "bfloat16":
        log.info("computing in %s", why)
        return torch.bfloat16
    available = available_memory()
    if float32_bytes is None or available is None or float32_bytes <= FLOAT32_MEMORY_SHARE * available:
        return torch.float32
    log.warning("loading in %s, the checkpoint's dtype: in float32 its weights (%.1f GB) would not fit in the %.1f GB of memory "
                "available (ask --dtype, or dtype= in Python, to choose)", dtype_name(own), float32_bytes / 1e9,
                available / 1e9)
    return own


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
    float32_bytes = None
    if files:
        found = ckpt.read_tensor_shapes(files)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        expected = _expected_shapes(config)
        ckpt.check_shapes(expected, found, str(folder), optional=tied)
        float32_bytes = 4 * sum(torch.Size(shape).numel() for shape in found.values())
    elif moe is not None:
        raise ckpt.CheckpointError(f"{folder}: the expert weights must be in safetensors files; none found")
    elif not any(folder.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin): "
                                "give the whole checkpoint folder")
    dtype = dtype or default_dtype(device, config_dtype(config), float32_bytes)
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
        ckpt.load_moe_state_dict(model, ckpt.SafetensorsTensors(files, keep=lambda k: ".moe_adapter." in k), str(folder))
    return model.to(device), tokenizer


def load_adapter(folder: Path, dtype, device, base_model: str | None = None) -> LoadedModel:
    """``base_model``: the base to load under the adapter, if not the one the checkpoint names (moved or renamed).

    The base loads in ``dtype`` (default: :func:`default_dtype`'s) and the adapter's weights go into it; what the
    adapter adds to base weights (a LoRA, the new token rows) is summed in float32 and rounded once, so that a
    bf16 model is never held in float32 whole."""
    config = ckpt.AdapterConfig.read(folder)
    if dtype is None and device.type != "cpu":  # the base's own dtype, as for any checkpoint on a GPU (it loads on the CPU)
        base = read_config(resolve_folder(base_model or config.base_model))
        dtype = default_dtype(device, config_dtype(base))
    model, _ = load_model(base_model or config.base_model, dtype=dtype, device="cpu")
    dtype = model.dtype
    embeddings_to_float32(model)
    tokenizer = read_tokenizer(folder)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its tokenizer has the reflection tokens
    if config.moe:  # the same order as training: experts first, then LoRA over the dense projections
        m = ckpt.moe_settings(config.moe, str(folder / ckpt.ADAPTER_CONFIG))
        inject_moe(model, m.num_experts, m.topk, m.adapter_dim, m.moe_scaling, m.dropout)
    weights = [folder / ckpt.ADAPTER_WEIGHTS]
    if config.moe:
        ckpt.load_moe_state_dict(model, ckpt.SafetensorsTensors(weights, keep=lambda k: ".moe_adapter." in k), str(weights[0]))
    rows = ckpt.read_tensors(weights, keep=lambda k: k.startswith("new_token_rows."))
    ckpt.load_new_token_rows(model, rows, config.num_base_tokens, str(weights[0]))
    if config.lora:  # last: a LoRA on embed_tokens/lm_head adds its delta to the new rows just loaded, as in training
        model = merge_lora(model, folder / ckpt.ADAPTER_LORA_DIR)
    return LoadedModel(model.to(device=device, dtype=dtype), tokenizer, config.prompt_format)


def embeddings_to_float32(model: nn.Module) -> None:
    """The input and output embeddings in float32 (a tied pair stays one matrix): rows added to them, and a LoRA's
    delta on them, are then rounded once, when the model goes to its dtype."""
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            module.float()


def merge_lora(model: nn.Module, lora_dir: Path) -> nn.Module:
    """``model`` with the PEFT LoRA in ``lora_dir`` folded in: each weight gets ``scale * B @ A`` added in float32
    and is rounded once to its own dtype, one module at a time."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    wrapped = PeftModel.from_pretrained(model, str(lora_dir))
    for module in wrapped.modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            dtype = weight.dtype
            weight.data = weight.data.float()
            module.merge()
            weight.data = weight.data.to(dtype)
    return wrapped.unload()


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, expert (routers + experts) and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".moe_adapter." in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "experts": experts, "dense": total - experts, "trainable": trainable}
