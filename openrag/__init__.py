"""openrag: Open-RAG (sparse mixture of adapter experts + reflection tokens + adaptive retrieval)."""

from .model import (
    REFLECTION_TOKENS,
    CheckpointError,
    MoEConfig,
    add_reflection_tokens,
    inject_moe,
    load_model,
    moe_config_of,
    parameter_counts,
    remove_moe,
    save_adapter,
    save_merged,
)
from .passage import Passage

__version__ = "0.1.0"

# Loaded on first use: the answering engine imports transformers, which `openrag --help` should not pay for.
_LAZY = {name: ".answer" for name in ("Answer", "AnswerOptions", "Candidate", "OpenRAG")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'openrag' has no attribute {name!r}")


__all__ = [
    "Answer",
    "AnswerOptions",
    "Candidate",
    "OpenRAG",
    "Passage",
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
