"""openrag: Open-RAG (sparse mixture of adapter experts + reflection tokens + adaptive retrieval)."""

from .checkpoints import CheckpointError, save_adapter, save_merged
from .loading import load_model, parameter_counts
from .moe import MoEConfig, inject_moe, moe_config_of, remove_moe
from .reflection import REFLECTION_TOKENS, add_reflection_tokens

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "MoEConfig",
    "REFLECTION_TOKENS",
    "add_reflection_tokens",
    "inject_moe",
    "load_model",
    "moe_config_of",
    "parameter_counts",
    "remove_moe",
    "save_adapter",
    "save_merged",
]
