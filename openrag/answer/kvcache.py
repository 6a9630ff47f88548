"""The engine's own KV cache: per layer one preallocated key and one value buffer, written in place.

It subclasses nothing of transformers. A Hugging Face causal LM takes it as its cache argument because its
forward only ever calls, duck-typed, the few methods below (transformers 5.16 to 5.24 alike):

* ``update(keys, values, layer_idx, ...)`` in each attention layer: append, return everything held;
* ``get_seq_length(layer_idx)``: positions when none are given (a prefill);
* ``get_query_offset(layer_idx)`` and ``get_mask_sizes(query_length, layer_idx)``: the causal mask's size;
* ``is_sliding`` (no layer is) and ``is_compileable`` (False), read with ``hasattr``/``getattr``.

The argument's name changed (``past_key_values`` up to 5.2x, ``cache`` from 5.24): :func:`cache_keyword`
reads it from the model's signature.
"""

from __future__ import annotations

import inspect

from torch import Tensor

CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(model) -> str:
    """The name under which ``model.forward`` takes a KV cache."""
    params = inspect.signature(model.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in params:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes no KV cache ({' or '.join(CACHE_KEYWORDS)}); "
                    "the engine needs a Hugging Face causal LM")


class KVCache:
    """Keys and values of ``n_layers`` layers: ``k[l], v[l]`` are [B, Hkv, capacity, Dh], the first
    ``lengths[l]`` slots hold data. Buffers are made on the first ``update`` or given with :meth:`set`."""

    is_compileable = False

    def __init__(self, n_layers: int, capacity: int):
        self.capacity = capacity
        self.k: list[Tensor | None] = [None] * n_layers
        self.v: list[Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    @property
    def n_layers(self) -> int:
        return len(self.k)

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self.n_layers

    def set(self, layer: int, k: Tensor, v: Tensor, length: int) -> None:
        """Use buffers ``k, v`` [B, Hkv, S, Dh] for ``layer``, their first ``length`` slots filled."""
        self.k[layer], self.v[layer], self.lengths[layer] = k, v, length

    def held(self, layer: int) -> tuple[Tensor, Tensor]:
        """The filled slots of ``layer``: keys, values [B, Hkv, length, Dh] (views)."""
        n = self.lengths[layer]
        return self.k[layer][:, :, :n], self.v[layer][:, :, :n]

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append ``key_states, value_states`` [B, Hkv, T, Dh] to ``layer_idx``; return all it holds."""
        if self.k[layer_idx] is None:  # every slot read (held) is written first: no zero fill needed
            B, H, _, D = key_states.shape
            self.set(layer_idx, key_states.new_empty(B, H, self.capacity, D), value_states.new_empty(B, H, self.capacity, D), 0)
        n, t = self.lengths[layer_idx], key_states.shape[2]
        if n + t > self.k[layer_idx].shape[2]:
            raise RuntimeError(f"KV buffer overflow: {n} + {t} slots > capacity {self.k[layer_idx].shape[2]}")
        self.k[layer_idx][:, :, n : n + t] = key_states
        self.v[layer_idx][:, :, n : n + t] = value_states
        self.lengths[layer_idx] = n + t
        return self.held(layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(kv_length, kv_offset) of the mask for ``query_length`` new tokens."""
        return self.lengths[layer_idx] + query_length, 0

    def select(self, rows: list[int], start: int) -> None:
        """Keep batch rows ``rows`` (ascending) and drop the first ``start`` slots of every layer, in place:
        the kept rows move up over the dropped ones (their filled slots only) and the buffers become views."""
        moves = [(j, i) for j, i in enumerate(rows) if i != j]  # (to, from), to < from: no source is overwritten first
        for l in range(self.n_layers):
            n = self.lengths[l]
            for buf in (self.k[l], self.v[l]):  # [B, Hkv, capacity, Dh]
                for j, i in moves:
                    buf[j, :, :n] = buf[i, :, :n]
            self.set(l, self.k[l][: len(rows), :, start:], self.v[l][: len(rows), :, start:], n - start)

    def __len__(self) -> int:
        return self.n_layers

