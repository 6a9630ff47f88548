"""What a generation backend is given and gives back, and the tokens every engine is built with.

:class:`BackendOptions` (which backend, and vLLM's settings), :class:`LoadedBackend` (what a backend's loader
returns) and :func:`engine_tokens`. The registry of backends (answer.backends) and each backend's loader
(vllm_engine.py for vLLM) import this module; it imports neither, so they form no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..model.reflection import reflection_token_ids
from .scoring import WATCH


@dataclass
class LoadedBackend:
    """What a backend loaded: the model (None where the engine holds it elsewhere, as vLLM does), its
    tokenizer, the engine (None: the pipeline builds the built-in one over ``model``) and what the
    checkpoint says about answering with it."""

    model: object | None
    tokenizer: object
    engine: object | None = None
    prompt_format: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BackendOptions:
    """Which backend generates, the built-in engine's compiled forwards, and vLLM's settings; every field is also
    a flag of ask, eval and serve (:func:`openrag.answer.backends.add_backend_flags`)."""

    backend: str = "torch"  # a name of answer.backends.BACKENDS, checked when it loads (load_backend)
    compile: bool = field(default=False, metadata={"help": "torch: each decoder layer's work outside attention through "
                          "torch.compile (openrag.model.compiled): ~20 s to compile at load, ~3 s from inductor's disk "
                          "cache; the same answers in float32; measured no faster overall on a 2-core CPU (BENCHMARKS.md, "
                          "'Compiled forwards'): off by default, a switch to measure elsewhere"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs one model is split over (a 13B model "
                                                                   "on 24 GB cards: 2)"})
    gpu_memory_utilization: float | None = field(default=None, metadata={"help": "vllm: the share of GPU memory vLLM "
                                                 "takes for weights and KV cache (default: vLLM's, 0.92); on a CPU, "
                                                 "of the RAM, used only with --kv_cache_gib unset"})
    kv_cache_gib: float | None = field(default=None, metadata={"help": "vllm: KV cache size in GiB (default on a CPU: "
                                       "$VLLM_CPU_KVCACHE_SPACE, else 2; on GPUs: what --gpu_memory_utilization leaves)"})
    enforce_eager: bool = field(default=False, metadata={"help": "vllm: no CUDA graphs and no torch.compile (starts "
                                                         "in seconds, decodes slower)"})

    def __post_init__(self):
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.backend != "vllm":
            changed = vllm_settings_given({f.name: getattr(self, f.name) for f in fields(self)})
            if changed:
                raise ValueError(f"--{', --'.join(changed)}: vLLM settings; add --backend vllm")
        elif self.compile:
            raise ValueError("--compile compiles the built-in engine's forwards; vLLM compiles its own (unless "
                             "--enforce_eager): drop --compile or use --backend torch")


def vllm_settings_given(values: dict) -> list[str]:
    """The vLLM settings that ``values`` (BackendOptions' field names -> values) sets to other than their defaults."""
    return [f.name for f in fields(BackendOptions) if f.name not in ("backend", "compile") and values[f.name] != f.default]


def untrained_tokens_note(name: str) -> str:
    return (f"{name} had no reflection tokens: untrained ones were added, so its retrieval decisions "
            "and critique scores carry no meaning")


# -- what every engine is built with -------------------------------------------------------------------


def engine_tokens(tokenizer, generation_config=None) -> tuple[list[int], dict[str, list[int]], int]:
    """(stop ids, watched groups, pad id) for a tokenizer with the reflection tokens: rows stop at the
    tokenizer's EOS or any EOS of the generation config; the groups are scoring's WATCH as token ids."""
    stop = {tokenizer.eos_token_id}
    config_eos = getattr(generation_config, "eos_token_id", None)
    stop.update(config_eos if isinstance(config_eos, list) else [config_eos])
    stop.discard(None)
    if not stop:
        raise ValueError("the tokenizer has no EOS token and the model's generation config names none")
    ids = reflection_token_ids(tokenizer)
    watch = {g: [ids[t] for t in toks] for g, toks in WATCH.items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop))
    return sorted(stop), watch, pad
