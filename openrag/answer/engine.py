"""Batched greedy generation for many rows that share prompt prefixes (the speed half of docs/method.md section 5).

The engine knows token ids and log-probabilities, nothing of passages or reflection tokens. A prompt is
prefilled once (beside prompts of similar length); its KV cache is then fanned out to every row that continues it; each
row appends its own forced tokens (``[Retrieval]<paragraph>...</paragraph>`` for instance) and all rows
decode together, greedily, one column per step, until each stops (a stop token or ``max_new_tokens``).
Per step only what scoring needs leaves the loop: the generated token's log-prob and the log-probs of a
few watched token groups; no full-vocabulary tensor is kept.

KV layout of one ``generate`` call with B rows (``mask[b, s]``: may row b attend to slot s)::

    | pad | shared prefix (c_b) | forced suffix of row b | generated tokens ...
    |<------------------ S slots ------------------>|

Rows are right-aligned, so every row's newest token sits in the last column and a decode step is one
``[B, 1]`` forward. Position ids are per row (RoPE sees each row as if it were alone) and padded slots are
masked out. The suffixes are computed in groups of similar length (little padding), each group in a cache
of its own laid out ``| pad | prefix | pad | suffix |``, then moved into place. A row that stops is
dropped from the batch, with any leading slots no remaining row attends to. The cache is the engine's own
(kvcache.py: plain tensors, nothing of transformers' cache classes).

At most ``max_batch`` rows decode together; the others wait. When a quarter of the batch has stopped, waiting
rows are admitted (refill): their suffixes are computed as above and the running batch is copied into a cache
wide enough for both, every row still right-aligned, so the next decode step is again one ``[B, 1]`` forward.

Prompts and suffixes are computed in slices of at most ``forward_tokens`` positions per forward (chunked prefill),
which bounds a forward's memory. A server makes the slices short on a CPU (:meth:`Engine.take_turns`), so that no
forward, however long a row, takes more than a bounded time: a forward is the step at which it stops an abandoned
call and lets another call's work run (openrag.serve.turns). Where nothing waits between forwards (eval, ask), wide
slices are faster: fewer, larger products.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .kvcache import KVCache, cache_keyword


@dataclass
class Prefix:
    """A prefilled prompt: its KV cache and the watched groups' log-probs at the first generated position."""

    ids: list[int]
    kv: list[tuple[Tensor, Tensor]]  # per layer: keys, values [1, Hkv, P, Dh]
    first: dict[str, list[float]]  # group -> log-probs of its tokens (in the group's order)


@dataclass
class RowResult:
    """What one row generated, and the few log-probabilities extracted on the way."""

    tokens: list[int] = field(default_factory=list)  # generated ids, the stop token included if one came
    logprobs: list[float] = field(default_factory=list)  # log-prob of each generated token
    first: dict[str, list[float]] = field(default_factory=dict)  # each group at the first generated position
    on_use: dict[str, tuple[int, list[float]]] = field(default_factory=dict)  # group -> (step, log-probs) at
    # the first step whose generated token belongs to the group
    stopped: bool = False  # ended on a stop token (else it ran out of max_new_tokens)


@dataclass
class EngineStats:
    """Work counters, for throughput and FLOP accounting (see benchmarks/)."""

    forwards: int = 0
    real_tokens: int = 0  # token positions that belong to a row
    padded_tokens: int = 0  # positions computed only because of padding
    attended_pairs: int = 0  # sum over real query tokens of the slots they attend to
    logit_rows: int = 0  # positions projected onto the vocabulary
    admissions: int = 0  # times waiting rows joined the batch (the first batch included)
    decode_tokens: int = 0  # the real positions computed by decode steps (one per row and step); the rest are prefill's
    prefill_seconds: float = 0.0  # wall time in the forwards of prompts and suffixes (on a GPU: to launch them)
    decode_seconds: float = 0.0  # wall time in the decode steps' forwards


REFILL_FRACTION = 0.25  # waiting rows join once this share of max_batch has stopped (each join copies the cache)
# The most positions one prefill forward computes (rows x slice width). 4,096 where nothing waits between forwards:
# on a CPU it answered 30 held-out questions 1.2x faster than slices of 256 (BENCHMARKS.md, "Chunked prefill").
FORWARD_TOKENS = 4096
# The same where a server's calls take turns between forwards, on a CPU: a slice of a 135M model takes about a second
# on a busy core.
TURN_FORWARD_TOKENS_CPU = 256


@dataclass
class _Batch:
    """The rows decoding together: their cache (every row right-aligned at ``cache.lengths[0]``), which slots
    each attends to, the position of its next token, its result index and its logits for the next pick."""

    cache: KVCache
    mask: Tensor  # [B, capacity]
    next_pos: Tensor  # [B]
    rows: list[int]  # result index of each batch row
    logits: Tensor  # [B, V]


def shared_length(prefix: Sequence[int], row: Sequence[int]) -> int:
    """How many leading tokens ``row`` can take from ``prefix``'s cache: their common prefix, leaving the
    row at least one token of its own (its first generated token needs a forward of its own)."""
    limit = min(len(prefix), len(row) - 1)
    n = 0
    while n < limit and prefix[n] == row[n]:
        n += 1
    return n


def zero_leading_slots(k: Tensor, v: Tensor, ends: Sequence[int]) -> None:
    """Zero slots ``[0, ends[b])`` of batch row b in ``k, v`` [B, Hkv, capacity, Dh]: the masked slots before
    each row's start. Attention reads them with weight 0, so they must hold finite values; every other slot of
    the engine's buffers is written before it is read, so buffers are allocated without a fill."""
    for b, end in enumerate(ends):
        k[b, :, :end], v[b, :, :end] = 0, 0


class Engine:
    """Greedy batched generation with a shared-prefix KV cache for any Hugging Face causal LM.

    ``stop_ids``: tokens that end a row (kept as its last token). ``watch``: named token-id groups whose
    log-probs are reported at the first generated position and where a token of the group is generated.
    """

    def __init__(self, model: nn.Module, stop_ids: Sequence[int], watch: Mapping[str, Sequence[int]] | None = None,
                 pad_id: int = 0, forward_tokens: int | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.forward_tokens = forward_tokens or FORWARD_TOKENS
        self.n_layers = model.config.get_text_config().num_hidden_layers
        self.cache_keyword = cache_keyword(model)  # "cache" (transformers >= 5.24) or "past_key_values"
        self.stop_ids = set(int(t) for t in stop_ids)
        self.pad_id = int(pad_id)
        watch = dict(watch or {})
        self.groups = list(watch)
        ids, self.slices, self.group_of = [], {}, {}
        for name, group in watch.items():
            self.slices[name] = slice(len(ids), len(ids) + len(group))
            for t in group:
                self.group_of.setdefault(int(t), []).append(name)
            ids.extend(int(t) for t in group)
        self.watch_ids = torch.tensor(ids, dtype=torch.long, device=self.device)  # [W]
        self.stats = EngineStats()

    def take_turns(self) -> None:
        """Short forwards from now on where they are slow (a CPU): a server's calls stop and take turns between them."""
        if self.device.type == "cpu":
            self.forward_tokens = min(self.forward_tokens, TURN_FORWARD_TOKENS_CPU)

    # -- the two passes -------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> list[Prefix]:
        """Run the prompts and keep each one's KV cache for ``generate``. Prompts of similar length share a forward
        (left-padded, each at its own positions; little padding, see :meth:`_buckets`); each keeps its own slots."""
        if any(not ids for ids in prompts):
            raise ValueError("cannot prefill an empty prompt")
        prefixes: list[Prefix | None] = [None] * len(prompts)
        for bucket in self._buckets([len(ids) for ids in prompts], self.forward_tokens):
            n, P = len(bucket), len(prompts[bucket[0]])  # the longest first
            x = torch.full((n, P), self.pad_id, dtype=torch.long)  # [n, P] left-padded prompts
            pos = torch.zeros((n, P), dtype=torch.long)
            mask = torch.zeros((n, P), dtype=torch.bool, device=self.device)
            for i, b in enumerate(bucket):
                m = len(prompts[b])
                x[i, P - m :], pos[i, P - m :], mask[i, P - m :] = torch.tensor(list(prompts[b])), torch.arange(m), True
            cache = KVCache(self.n_layers, P)
            # Prompts of one length need no padding: positions and mask are left to the model (the plain causal case).
            padded = not bool(mask.all())
            logits = self._sliced_forward(x.to(self.device), pos.to(self.device) if padded else None,
                                          mask if padded else None, cache)  # [n, V]
            lengths = [len(prompts[b]) for b in bucket]
            self._count(real=sum(lengths), padded=n * P - sum(lengths), pairs=sum(m * (m + 1) // 2 for m in lengths),
                        logit_rows=n)
            _, _, watched = self._pick(logits)  # [n, W]
            for i, (b, m) in enumerate(zip(bucket, lengths)):
                kv = [tuple(t[i : i + 1, :, P - m :] for t in cache.held(l)) for l in range(self.n_layers)]  # [1, Hkv, m, Dh]
                prefixes[b] = Prefix(list(prompts[b]), kv, self._split(watched[i].tolist()))
        return prefixes

    @torch.inference_mode()
    def generate(self, prefixes: Sequence[Prefix], rows: Sequence[tuple[int, Sequence[int]]],
                 max_new_tokens: int, max_batch: int | None = None) -> list[RowResult]:
        """Continue each row ``(prefix index, full token ids)`` greedily; rows reuse their prefix's cache for
        the tokens they share with it and compute only the rest. At most ``max_batch`` rows (None: all) decode
        together, the rest join as rows stop. Returns one result per row, in order."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not rows:
            return []
        shared = [shared_length(prefixes[q].ids, ids) for q, ids in rows]
        if min(shared) < 1:
            raise ValueError("every row must start with at least one token of its prefix")
        suffixes = [list(ids[c:]) for (_, ids), c in zip(rows, shared)]
        width = len(rows) if max_batch is None else max_batch
        refill = max(1, round(REFILL_FRACTION * width))
        results = [RowResult() for _ in rows]
        waiting = deque(range(len(rows)))
        batch: _Batch | None = None
        while batch is not None or waiting:
            free = width - (0 if batch is None else len(batch.rows))
            if waiting and (batch is None or free >= min(refill, len(waiting))):
                joining = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                batch = self._admit(batch, prefixes, rows, shared, suffixes, joining, max_new_tokens)
            batch = self._step(batch, results, max_new_tokens)
        return results

    # -- pieces ---------------------------------------------------------------------------------------

    @staticmethod
    def _buckets(lengths: list[int], max_tokens: int = FORWARD_TOKENS, max_padding: float = 0.1) -> list[list[int]]:
        """Rows grouped by length (longest first) so that a padded forward wastes little: at most
        ``max_padding`` of a group's positions are padding and at most ``max_tokens`` are computed."""
        buckets: list[list[int]] = []
        padding = 0
        for b in sorted(range(len(lengths)), key=lambda b: -lengths[b]):
            if buckets:
                group = buckets[-1]
                width, count = lengths[group[0]], len(group) + 1
                if width * count <= max_tokens and padding + width - lengths[b] <= max_padding * width * count:
                    group.append(b)
                    padding += width - lengths[b]
                    continue
            buckets.append([b])
            padding = 0
        return buckets

    def _extend(self, prefixes, rows, shared, suffixes, bucket: list[int], targets: list[int], cache: KVCache,
                S: int) -> Tensor:
        """Run the suffixes of the rows in ``bucket`` over their shared prefixes, in a cache of their own,
        then move each row's prefix + suffix into batch row ``targets[i]`` of ``cache``, right-aligned at slot
        S. Returns [b, V] logits."""
        sub_rows = [rows[b] for b in bucket]
        sub_shared = [shared[b] for b in bucket]
        sub_suffixes = [suffixes[b] for b in bucket]
        n, P, T = len(bucket), max(sub_shared), max(len(s) for s in sub_suffixes)
        sub_cache, mask = self._fan_out(prefixes, sub_rows, sub_shared, P, T)  # mask: [n, P + T]
        x = torch.full((n, T), self.pad_id, dtype=torch.long)  # [n, T] left-padded suffixes
        pos = torch.zeros((n, T), dtype=torch.long)
        for i, (c, s) in enumerate(zip(sub_shared, sub_suffixes)):
            x[i, T - len(s) :] = torch.tensor(s)
            pos[i, T - len(s) :] = torch.arange(c, c + len(s))
            mask[i, P + T - len(s) :] = True
        logits = self._sliced_forward(x.to(self.device), pos.to(self.device), mask, sub_cache)  # [n, V]
        real = sum(len(s) for s in sub_suffixes)
        pairs = sum(len(s) * c + len(s) * (len(s) + 1) // 2 for c, s in zip(sub_shared, sub_suffixes))
        self._count(real=real, padded=n * T - real, pairs=pairs, logit_rows=n)
        for l in range(self.n_layers):
            for i, (b, c, s) in enumerate(zip(targets, sub_shared, sub_suffixes)):
                t = len(s)
                for a, z in ((sub_cache.k[l], cache.k[l]), (sub_cache.v[l], cache.v[l])):  # [n, Hkv, P + T, Dh] -> [B, Hkv, S', Dh]
                    z[b, :, S - t - c : S - t] = a[i, :, P - c : P]
                    z[b, :, S - t : S] = a[i, :, P + T - t :]
        return logits

    def _fan_out(self, prefixes, rows, shared, P: int, extra: int) -> tuple[KVCache, Tensor]:
        """A cache of n rows whose first P slots hold each row's shared prefix, right-aligned."""
        n, capacity = len(rows), P + extra
        cache = KVCache(self.n_layers, capacity)
        mask = torch.zeros((n, capacity), dtype=torch.bool, device=self.device)
        for i, c in enumerate(shared):
            mask[i, P - c : P] = True
        for l in range(self.n_layers):
            k0, v0 = prefixes[rows[0][0]].kv[l]  # [1, Hkv, P0, Dh]
            kbuf = k0.new_empty(n, k0.shape[1], capacity, k0.shape[3])  # [n, Hkv, P + extra, Dh]
            vbuf = v0.new_empty(n, v0.shape[1], capacity, v0.shape[3])
            zero_leading_slots(kbuf, vbuf, [P - c for c in shared])
            for i, ((q, _), c) in enumerate(zip(rows, shared)):
                k, v = prefixes[q].kv[l]
                kbuf[i, :, P - c : P] = k[0, :, :c]
                vbuf[i, :, P - c : P] = v[0, :, :c]
            cache.set(l, kbuf, vbuf, P)
        return cache, mask

    def _admit(self, batch: _Batch | None, prefixes, rows, shared, suffixes, joining: list[int],
               max_new_tokens: int) -> _Batch:
        """The running batch (None: none yet) with the rows ``joining`` added: their suffixes computed (in
        buckets), the running rows' slots copied along, all right-aligned at slot S, room for max_new_tokens."""
        self.stats.admissions += 1
        old = 0 if batch is None else len(batch.rows)
        held = 0 if batch is None else batch.cache.lengths[0]
        lengths = [shared[b] + len(suffixes[b]) for b in joining]
        S = max(lengths + [held])
        B, capacity = old + len(joining), S + max_new_tokens
        k0, v0 = prefixes[rows[joining[0]][0]].kv[0]  # [1, Hkv, P0, Dh]
        cache = KVCache(self.n_layers, capacity)
        for l in range(self.n_layers):
            k = k0.new_empty(B, k0.shape[1], capacity, k0.shape[3])  # [B, Hkv, S + new, Dh]
            v = v0.new_empty(B, v0.shape[1], capacity, v0.shape[3])
            zero_leading_slots(k, v, [S - held] * old + [S - n for n in lengths])
            if batch is not None:
                k[:old, :, S - held : S], v[:old, :, S - held : S] = batch.cache.held(l)
            cache.set(l, k, v, S)
        mask = torch.zeros((B, capacity), dtype=torch.bool, device=self.device)  # [B, S + new]
        if batch is not None:
            mask[:old, S - held : S] = batch.mask[:, :held]
        for i, n in enumerate(lengths):
            mask[old + i, S - n : S] = True
        logits = [None] * len(joining)
        for bucket in self._buckets([len(suffixes[b]) for b in joining]):
            picked = [joining[i] for i in bucket]
            bucket_logits = self._extend(prefixes, rows, shared, suffixes, picked, [old + i for i in bucket], cache, S)
            for j, i in enumerate(bucket):
                logits[i] = bucket_logits[j]  # [V]
        next_pos = torch.tensor(lengths, device=self.device)  # [b]
        if batch is None:
            return _Batch(cache, mask, next_pos, list(joining), torch.stack(logits))
        return _Batch(cache, mask, torch.cat([batch.next_pos, next_pos]), batch.rows + list(joining),
                      torch.cat([batch.logits, torch.stack(logits)]))

    def _step(self, batch: _Batch, results: list[RowResult], max_new_tokens: int) -> _Batch | None:
        """Pick each row's next token from its logits and record it; then run one decode forward for the rows
        that go on. None when every row has stopped."""
        tok, chosen, watched = self._pick(batch.logits)  # [B], [B], [B, W]
        keep = []
        for i, (t, lp, w) in enumerate(zip(tok.tolist(), chosen.tolist(), watched.tolist())):
            r = results[batch.rows[i]]
            step = len(r.tokens)
            r.tokens.append(t)
            r.logprobs.append(lp)
            if step == 0:
                r.first = self._split(w)
            for g in self.group_of.get(t, ()):
                r.on_use.setdefault(g, (step, w[self.slices[g]]))
            if t in self.stop_ids:
                r.stopped = True
            elif step + 1 < max_new_tokens:
                keep.append(i)
        if not keep:
            return None
        mask, next_pos, rows = batch.mask, batch.next_pos, batch.rows
        if len(keep) < len(rows):
            mask, tok, next_pos = self._compact(batch.cache, mask, keep, tok, next_pos)
            rows = [rows[i] for i in keep]
        n = batch.cache.lengths[0]
        mask[:, n] = True
        logits = self._forward(tok[:, None], next_pos[:, None], mask[:, : n + 1], batch.cache, decode=True)  # [B', V]
        self._count(real=len(rows), padded=0, pairs=int(mask[:, : n + 1].sum()), logit_rows=len(rows))
        self.stats.decode_tokens += len(rows)
        return _Batch(batch.cache, mask, next_pos + 1, rows, logits)

    def _compact(self, cache: KVCache, mask: Tensor, keep: list[int], tok: Tensor, next_pos: Tensor):
        """Drop stopped rows, and the leading slots no remaining row attends to."""
        idx = torch.tensor(keep, device=self.device)
        mask = mask[idx]  # [B', S]
        start = int(mask.any(0).nonzero()[0])
        cache.select(keep, start)
        return mask[:, start:], tok[idx], next_pos[idx]

    def _sliced_forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None, cache: KVCache) -> Tensor:
        """``x`` [n, T] new tokens after the slots ``cache`` holds (``mask`` [n, held + T]), run in column slices of
        at most ``forward_tokens`` positions each; the last slice's [n, V] logits."""
        n, T = x.shape
        held = cache.lengths[0]
        width = max(1, self.forward_tokens // n)
        for start in range(0, T, width):
            end = min(T, start + width)
            logits = self._forward(x[:, start:end], None if pos is None else pos[:, start:end],
                                   None if mask is None else mask[:, : held + end], cache)
        return logits

    def _forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None, cache: KVCache, decode: bool = False) -> Tensor:
        start = time.perf_counter()
        # The last position by index, not by slice: the [B, 1, D] copy is contiguous, whereas a strided view makes a
        # bf16 head product on the CPU broadcast the [V, D] head to every row (a copy of it per row per forward).
        last = torch.tensor([x.shape[1] - 1], device=x.device)
        out = self.model(input_ids=x, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=last,
                         **{self.cache_keyword: cache})
        logits = out.logits[:, -1]  # [B, V]
        seconds = time.perf_counter() - start
        self.stats.forwards += 1
        if decode:
            self.stats.decode_seconds += seconds
        else:
            self.stats.prefill_seconds += seconds
        return logits

    def _pick(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Greedy token, its log-prob and the watched log-probs; the [B, V] log-softmax is never built."""
        logits = logits.float()  # [B, V]
        lse = torch.logsumexp(logits, dim=-1)  # [B]
        tok = logits.argmax(dim=-1)  # [B]
        chosen = logits.gather(1, tok[:, None])[:, 0] - lse  # [B]
        watched = logits[:, self.watch_ids] - lse[:, None]  # [B, W]
        return tok, chosen, watched

    def _split(self, watched: list[float]) -> dict[str, list[float]]:
        return {g: watched[self.slices[g]] for g in self.groups}

    def _count(self, real: int, padded: int, pairs: int, logit_rows: int) -> None:
        s = self.stats
        s.real_tokens += real
        s.padded_tokens += padded
        s.attended_pairs += pairs
        s.logit_rows += logit_rows
