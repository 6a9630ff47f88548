"""The model a training run starts from: base, reflection tokens, experts, LoRA, and what may learn.

The order matches :func:`openrag.load_model` for an adapter checkpoint (resize for the tokens, inject
experts, then LoRA over the dense projections), so a saved checkpoint reloads into the same function.
Trainable: routers, experts, LoRA and the embedding rows of the new tokens. The embedding matrix itself
must require grad for those rows to learn; a gradient hook zeroes the old rows' gradient, and with no
weight decay on embeddings (see the trainer) Adam leaves those rows bit-identical.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.layouts import ADAPTER_CONFIG, released_moe_config
from ..model.loading import read_config, read_tokenizer, resolve_folder
from ..model.experts import inject_moe, moe_adapters
from ..model.reflection import add_reflection_tokens
from .args import ModelArguments, MoEArguments

log = logging.getLogger(__name__)

EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass
class TrainableModel:
    """What the trainer needs besides the model: how to write an adapter checkpoint of it."""

    model: nn.Module  # PEFT-wrapped when LoRA is on
    tokenizer: object
    base_model: str  # recorded in openrag_config.json; openrag.load_model resolves it
    num_base_tokens: int  # embedding rows below this index belong to the base and stay frozen
    lora: bool

    @property
    def inner(self) -> nn.Module:
        """The transformers model under any PEFT wrapper."""
        return self.model.get_base_model() if self.lora else self.model


def compute_dtype(bf16: bool, fp16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32


def recorded_name(name_or_path: str) -> str:
    """The base name to store in a checkpoint: local folders absolute, hub names and 'smollm2' as given."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def build_model(model_args: ModelArguments, moe_args: MoEArguments, bf16: bool = False, fp16: bool = False) -> TrainableModel:
    """Load the dense base and make it an Open-RAG model ready to train."""
    from transformers import AutoModelForCausalLM

    folder = resolve_folder(model_args.model_name_or_path)
    config = _check_dense(folder, model_args.model_name_or_path)
    dtype = compute_dtype(bf16, fp16)
    load_kwargs: dict = {"dtype": dtype}
    if model_args.bits == 4:
        load_kwargs.update(_four_bit_kwargs(dtype))
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, trust_remote_code=False, **load_kwargs)
    model.config.use_cache = False  # no KV cache while training
    tokenizer = read_tokenizer(folder)

    num_base_tokens = len(tokenizer)
    if model.get_input_embeddings().weight.shape[0] != num_base_tokens:
        # A vocabulary padded past the tokenizer (e.g. Qwen): drop the unused rows so that the new tokens'
        # rows are the last ones, as the adapter layout stores them.
        model.resize_token_embeddings(num_base_tokens, mean_resizing=False)
    add_reflection_tokens(model, tokenizer)

    if moe_args.num_experts > 0:
        inject_moe(model, moe_args.num_experts, moe_args.topk, moe_args.adapter_dim, moe_args.moe_scaling, moe_args.expert_dropout)
    for adapter in moe_adapters(model):
        adapter.float()  # trainable weights in float32; autocast runs the matmuls in bf16/fp16 when asked
    lora = model_args.lora_r > 0
    if model_args.bits == 4:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # the Trainer enables it by flag
    if lora:
        model = _add_lora(model, model_args)
    setup = TrainableModel(model, tokenizer, recorded_name(model_args.model_name_or_path), num_base_tokens, lora)
    mark_trainable(setup)
    return setup


def _check_dense(folder: Path, name: str):
    """The config of a dense base (read as openrag.load_model reads it), or ValueError."""
    if (folder / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{name} is an openrag adapter checkpoint; train from its dense base (to continue a run, use --resume_from_checkpoint)")
    config = read_config(folder)
    if released_moe_config(config) is not None:
        raise ValueError(f"{name} already has experts (a merged Open-RAG checkpoint); train from a dense base")
    return config


def _four_bit_kwargs(dtype: torch.dtype) -> dict:
    """QLoRA's loading: the frozen base in NF4 (double-quantised), on the GPU of this rank or on the CPU.
    The 4-bit layers compute in the run's dtype; a float32 run computes in bfloat16 on CUDA (QLoRA's recipe)
    and in float32 on the CPU (bitsandbytes' CPU backend takes either)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--bits 4 (QLoRA) needs bitsandbytes: pip install 'openrag[qlora]'")
    from transformers import BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if cuda and dtype == torch.float32 else dtype,
    )
    device = int(os.environ.get("LOCAL_RANK", 0)) if cuda else "cpu"
    return {"quantization_config": quant, "device_map": {"": device}}


def _add_lora(model: nn.Module, model_args: ModelArguments) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = model_args.lora_targets
    if getattr(model.config, "tie_word_embeddings", False) and any(t in EMBEDDING_MODULES for t in targets):
        # A LoRA on one side of a tied matrix would, once merged, change the other side too.
        targets = [t for t in targets if t not in EMBEDDING_MODULES]
        log.info("tied input/output embeddings: no LoRA on embed_tokens/lm_head (the new token rows train directly)")
    if not targets:
        raise ValueError("--lora_target_modules names no module; give some, or --lora_r 0 for no LoRA")
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    wrapped = next((n for n, _ in model.named_parameters() if "lora_" in n and ".moe_adapter." in n), None)
    if wrapped is not None:
        raise ValueError(f"--lora_target_modules reaches the experts ({wrapped}); they train in full: name dense projections only")
    return model


def embedding_weights(model: nn.Module) -> list[nn.Parameter]:
    """The input embedding matrix and, if untied, the output one (the base weights under any LoRA)."""
    weights = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not weights[0]:
        weights.append(head.weight)
    return weights


def mark_trainable(setup: TrainableModel) -> None:
    """Freeze everything, then open routers, experts, LoRA and the new token rows."""
    model = setup.model
    for param in model.parameters():
        param.requires_grad_(False)
    for adapter in moe_adapters(model):
        adapter.requires_grad_(True)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    for weight in embedding_weights(model):
        if weight.shape[0] > setup.num_base_tokens:
            if weight.dtype != torch.float32:
                weight.data = weight.data.float()  # new rows learn in float32 (Adam on bf16 weights loses updates)
            weight.requires_grad_(True)
            weight.register_hook(_keep_rows_frozen(setup.num_base_tokens))


def _keep_rows_frozen(num_frozen: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:  # grad: [V, D]
        out = torch.zeros_like(grad)
        out[num_frozen:] = grad[num_frozen:]
        return out

    return hook


def trainable_summary(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    groups = {"experts+routers": 0, "lora": 0, "embeddings": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = "experts+routers" if ".moe_adapter." in name else "lora" if "lora_" in name else "embeddings"
        groups[key] += p.numel()
    parts = ", ".join(f"{k} {v:,}" for k, v in groups.items() if v)
    return f"parameters: {total:,} total; trainable: {parts} (embeddings: only the new token rows change)"
