"""The model: adapter experts in every FFN (experts.py), reflection tokens (reflection.py), every checkpoint
layout (layouts.py), loading any of them (loading.py), merging a trained checkpoint (merge.py), and the
bundled base (bundled.py). Imports torch, transformers, peft and safetensors; nothing else of openrag."""

from .experts import MoEConfig, inject_moe, moe_config_of, remove_moe
from .layouts import CheckpointError, save_adapter, save_merged
from .loading import LoadedModel, load_model, load_pretrained, parameter_counts
from .reflection import REFLECTION_TOKENS, add_reflection_tokens

__all__ = [
    "CheckpointError", "LoadedModel", "MoEConfig", "REFLECTION_TOKENS", "add_reflection_tokens", "inject_moe",
    "load_model", "load_pretrained", "moe_config_of", "parameter_counts", "remove_moe", "save_adapter", "save_merged",
]
