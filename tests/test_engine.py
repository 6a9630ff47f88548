"""The engine against Hugging Face ``generate`` (the reference), one row at a time vs many rows at once."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import make_tiny_llama
from openrag.answer.engine import Engine, shared_length

WATCH = {"a": [5, 6], "b": [7, 8, 9]}


def reference(model, ids: list[int], max_new_tokens: int, stop: int):
    """Hugging Face greedy generation of one row: its tokens and each step's full log-softmax."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                         pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    logp = [torch.log_softmax(s[0].float(), -1) for s in out.scores]  # per step [V]
    return tokens, logp


def random_rows(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 12, 4)]
    tail = lambda n: torch.randint(3, 128, (n,), generator=g).tolist()  # noqa: E731
    rows = [
        (0, prompts[0] + tail(1)),
        (0, prompts[0] + tail(9)),
        (1, prompts[1] + tail(2)),
        (1, prompts[1][:5] + tail(3)),  # leaves the prefix before its end
        (0, prompts[0]),  # the prompt itself: its last token is recomputed in the row
        (2, prompts[2] + tail(15)),
    ]
    return prompts, rows


def pick_stop(model, rows, max_new_tokens):
    """A token that some rows generate early and others never: rows then stop at different steps."""
    firsts = [reference(model, ids, max_new_tokens, stop=-1)[0] for _, ids in rows]
    return firsts[1][3]


def test_batched_equals_hf_generate_row_by_row():
    model = make_tiny_llama()
    prompts, rows = random_rows()
    stop = pick_stop(model, rows, 12)
    engine = Engine(model, stop_ids=[stop], watch=WATCH)
    results = engine.generate(engine.prefill(prompts), rows, max_new_tokens=12)
    lengths = set()
    for (_, ids), r in zip(rows, results):
        tokens, logp = reference(model, ids, 12, stop)
        assert r.tokens == tokens
        assert r.stopped == (tokens[-1] == stop)
        lengths.add(len(tokens))
        expected = [logp[t][tok].item() for t, tok in enumerate(tokens)]
        assert r.logprobs == pytest.approx(expected, abs=1e-4)
        assert r.first["a"] == pytest.approx(logp[0][WATCH["a"]].tolist(), abs=1e-4)
        assert r.first["b"] == pytest.approx(logp[0][WATCH["b"]].tolist(), abs=1e-4)
        for group, ids_ in WATCH.items():
            steps = [t for t, tok in enumerate(tokens) if tok in ids_]
            if steps:
                step, values = r.on_use[group]
                assert step == steps[0]
                assert values == pytest.approx(logp[step][ids_].tolist(), abs=1e-4)
            else:
                assert group not in r.on_use
    assert len(lengths) > 1, "rows should stop at different steps (the batch shrinks on the way)"


@pytest.mark.parametrize("forward_tokens", [1, 4, 9])
def test_prefill_in_slices_equals_hf_generate(forward_tokens):
    """Chunked prefill (issue 31): prompts and suffixes computed a few positions per forward give what one forward
    gives, and no prefill forward computes more than ``forward_tokens`` positions (one row, at least)."""
    model = make_tiny_llama()
    prompts, rows = random_rows()
    stop = pick_stop(model, rows, 12)
    widths = []  # positions computed by each forward of the engine
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].numel()),
                                           with_kwargs=True)
    engine = Engine(model, stop_ids=[stop], watch=WATCH, forward_tokens=forward_tokens)
    prefixes = engine.prefill(prompts)
    prefilled = list(widths)
    results = engine.generate(prefixes, rows, max_new_tokens=12)
    hook.remove()
    for (_, ids), r in zip(rows, results):
        tokens, logp = reference(model, ids, 12, stop)
        assert r.tokens == tokens
        assert r.logprobs == pytest.approx([logp[t][tok].item() for t, tok in enumerate(tokens)], abs=1e-4)
    assert max(prefilled) <= forward_tokens and sum(prefilled) == sum(map(len, prompts))
    assert all(w <= max(forward_tokens, len(rows)) for w in widths), widths  # a decode step is [B, 1], B <= 6


def test_prompts_prefilled_together_equal_prompts_prefilled_alone():
    """Prompts of similar length share a left-padded forward; each keeps exactly its own slots, and its cache and
    first log-probs are those of a forward of its own. The pad slots held no NaN to leak (a pad query attends to
    nothing real)."""
    model = make_tiny_llama(seed=7)
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (20, 19, 20, 18, 5, 21)]
    engine = Engine(model, stop_ids=[2], watch=WATCH)
    assert any(len(b) > 1 and len({len(prompts[i]) for i in b}) > 1 for b in engine._buckets(list(map(len, prompts))))
    together = engine.prefill(prompts)
    for ids, pre in zip(prompts, together):
        (alone,) = engine.prefill([ids])
        assert pre.ids == ids
        for (k, v), (k1, v1) in zip(pre.kv, alone.kv):
            assert k.shape == k1.shape == (1, k1.shape[1], len(ids), k1.shape[3])
            torch.testing.assert_close(k, k1, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(v, v1, atol=1e-5, rtol=1e-4)
        for group, values in alone.first.items():
            assert pre.first[group] == pytest.approx(values, abs=1e-4)
    rows = [(i, ids + [9, 10, 11]) for i, ids in enumerate(prompts)]
    for (_, ids), r in zip(rows, engine.generate(together, rows, max_new_tokens=6)):
        tokens, logp = reference(model, ids, 6, stop=2)
        assert r.tokens == tokens
        assert r.logprobs == pytest.approx([logp[t][tok].item() for t, tok in enumerate(tokens)], abs=1e-4)


def test_the_head_reads_a_contiguous_last_position():
    """The last position reaches the vocabulary projection as a contiguous [B, 1, D]. A strided view of [B, T, D]
    cannot be folded into one product: torch then broadcasts the [V, D] head to [B, D, V], which bf16 products on
    the CPU copy, per forward (a third of a bf16 eval of the bundled model before this)."""
    model = make_tiny_llama()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (9, 9, 8)]
    engine = Engine(model, stop_ids=[2], watch=WATCH)
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    prefixes = engine.prefill(prompts)
    engine.generate(prefixes, [(i, ids + [9, 10]) for i, ids in enumerate(prompts)], max_new_tokens=3)
    hook.remove()
    assert seen and all(h.is_contiguous() and h.shape[1:] == (1, model.config.hidden_size) for h in seen)
    assert max(h.shape[0] for h in seen) > 1  # rows shared a forward


def test_work_counters_split_prefill_from_decode():
    """Each row's first token comes from its suffix's forward; every later one from a decode step (one position).
    The rest of the real positions are the prompts' and suffixes'; both phases' forwards are timed."""
    model = make_tiny_llama()
    prompts, rows = random_rows()
    engine = Engine(model, stop_ids=[pick_stop(model, rows, 12)], watch=WATCH)
    prefixes = engine.prefill(prompts)
    after_prompts = engine.stats.real_tokens
    results = engine.generate(prefixes, rows, max_new_tokens=12)
    s = engine.stats
    shared = [shared_length(prefixes[q].ids, ids) for q, ids in rows]
    assert after_prompts == sum(map(len, prompts)) and s.prefill_seconds > 0
    assert s.decode_tokens == sum(len(r.tokens) - 1 for r in results) > 0 and s.decode_seconds > 0
    assert s.real_tokens - s.decode_tokens == after_prompts + sum(len(ids) - c for (_, ids), c in zip(rows, shared))


def test_batched_equals_engine_one_row_at_a_time():
    model = make_tiny_llama(seed=3)
    prompts, rows = random_rows(seed=4)
    engine = Engine(model, stop_ids=[2], watch=WATCH)
    prefixes = engine.prefill(prompts)
    together = engine.generate(prefixes, rows, max_new_tokens=10)
    for row, r in zip(rows, together):
        (alone,) = engine.generate(engine.prefill([prompts[row[0]]]), [(0, row[1])], max_new_tokens=10)
        assert alone.tokens == r.tokens
        assert alone.logprobs == pytest.approx(r.logprobs, abs=1e-5)


@pytest.mark.parametrize("max_batch", [1, 2, 4])
def test_refilled_batches_equal_one_batch(max_batch):
    """Rows that wait for room and join a running batch (refill) generate what they generate all together."""
    model = make_tiny_llama(seed=5)
    prompts, rows = random_rows(seed=6)
    rows = rows + rows[::-1]  # 12 rows: several joins
    stop = pick_stop(model, rows, 12)
    engine = Engine(model, stop_ids=[stop], watch=WATCH)
    prefixes = engine.prefill(prompts)
    together = engine.generate(prefixes, rows, max_new_tokens=12)
    engine.stats.admissions = 0
    refilled = engine.generate(prefixes, rows, max_new_tokens=12, max_batch=max_batch)
    assert engine.stats.admissions > 1
    assert len({len(r.tokens) for r in together}) > 1, "rows should stop at different steps"
    for a, b in zip(together, refilled):
        assert b.tokens == a.tokens
        assert b.stopped == a.stopped
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
        for g, values in a.first.items():
            assert b.first[g] == pytest.approx(values, abs=1e-4)
        assert b.on_use.keys() == a.on_use.keys()
        for g, (step, values) in a.on_use.items():
            assert b.on_use[g][0] == step
            assert b.on_use[g][1] == pytest.approx(values, abs=1e-4)


@pytest.mark.parametrize("max_batch", [None, 2])
def test_unwritten_cache_slots_are_never_read(monkeypatch, max_batch):
    """Cache buffers are allocated without a zero fill: poison every fresh buffer with NaN and the rows
    still generate what Hugging Face generates (a NaN read, even under a mask, would spread)."""
    model = make_tiny_llama(seed=7)
    prompts, rows = random_rows(seed=8)
    stop = pick_stop(model, rows, 12)
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **kw: new_empty(self, *a, **kw).fill_(float("nan")))
    engine = Engine(model, stop_ids=[stop], watch=WATCH)
    results = engine.generate(engine.prefill(prompts), rows, max_new_tokens=12, max_batch=max_batch)
    monkeypatch.undo()
    for (_, ids), r in zip(rows, results):
        tokens, logp = reference(model, ids, 12, stop)
        assert r.tokens == tokens
        assert r.logprobs == pytest.approx([logp[t][tok].item() for t, tok in enumerate(tokens)], abs=1e-4)


def test_prefill_reports_first_position_groups():
    model = make_tiny_llama()
    prompt = list(range(10, 30))
    (prefix,) = Engine(model, [2], WATCH).prefill([prompt])
    logp = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)
    assert prefix.first["b"] == pytest.approx(logp[WATCH["b"]].tolist(), abs=1e-5)


def test_results_hold_only_small_python_values():
    model = make_tiny_llama()
    prompts, rows = random_rows()
    results = Engine(model, [2], WATCH).generate(Engine(model, [2], WATCH).prefill(prompts), rows, 5)
    for r in results:
        json.dumps(r.__dict__)  # plain lists of floats and ints, no tensors
        assert all(len(v) == len(WATCH[g]) for g, v in r.first.items())


def test_shared_length_leaves_each_row_a_token():
    assert shared_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert shared_length([1, 2, 3], [1, 2, 3]) == 2
    assert shared_length([1, 2, 3], [1, 9, 3, 4]) == 1
    assert shared_length([1, 2, 3], [7, 8]) == 0


def test_buckets_bound_padding_and_size():
    lengths = [100, 3, 95, 50, 98, 49, 1, 200]
    buckets = Engine._buckets(lengths, max_tokens=300, max_padding=0.1)
    assert sorted(b for group in buckets for b in group) == list(range(len(lengths)))
    for group in buckets:
        width = max(lengths[b] for b in group)
        assert width * len(group) <= 300 or len(group) == 1
        assert sum(width - lengths[b] for b in group) <= 0.1 * width * len(group)
    assert [0, 4, 2] in buckets  # 100, 98, 95 share one padded forward


def test_bad_calls_are_refused():
    model = make_tiny_llama()
    engine = Engine(model, [2], WATCH)
    prefixes = engine.prefill([[5, 6, 7]])
    assert engine.generate(prefixes, [], 4) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(prefixes, [(0, [5, 6, 7, 8])], 0)
    with pytest.raises(ValueError, match="max_batch"):
        engine.generate(prefixes, [(0, [5, 6, 7, 8])], 4, max_batch=0)
    with pytest.raises(ValueError, match="at least one token of its prefix"):
        engine.generate(prefixes, [(0, [9, 9])], 4)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.prefill([[]])


@pytest.mark.slow
def test_bundled_base_batched_equals_hf_generate(smollm2, tmp_path):
    """Real prompts and passages on the bundled base: all rows of two questions in one batch."""
    from copy import deepcopy

    from openrag import add_reflection_tokens
    from openrag.answer.prompts import evidence_suffix, question_prompt

    model, tokenizer = deepcopy(smollm2[0]), deepcopy(smollm2[1])
    add_reflection_tokens(model, tokenizer)
    questions = ["Who wrote the novel Dracula?", "Which river flows through Paris?"]
    passages = [["Dracula is an 1897 Gothic horror novel by Irish author Bram Stoker.",
                 "Frankenstein is an 1818 novel written by Mary Shelley."],
                ["The Seine is a river in northern France. It flows through Paris."]]
    prompts = [question_prompt("multihop", q) for q in questions]
    rows = [(i, tokenizer(prompts[i] + s).input_ids) for i in range(2)
            for s in ["[No Retrieval]"] + [evidence_suffix(p) for p in passages[i]]]
    stop = tokenizer.eos_token_id
    engine = Engine(model, [stop], {"rel": tokenizer.convert_tokens_to_ids(["[Relevant]", "[Irrelevant]"])})
    results = engine.generate(engine.prefill([tokenizer(p).input_ids for p in prompts]), rows, max_new_tokens=8)
    for (_, ids), r in zip(rows, results):
        tokens, logp = reference(model, ids, 8, stop)
        assert r.tokens == tokens
        assert r.logprobs == pytest.approx([logp[t][tok].item() for t, tok in enumerate(tokens)], abs=1e-3)


def test_forwards_are_wide_unless_a_server_takes_turns_on_a_cpu():
    """Eval and ask compute slices of FORWARD_TOKENS (fewer, larger products: faster where nothing waits between
    forwards); a server's calls take turns between forwards, so on a CPU it makes them short."""
    from openrag.answer.engine import FORWARD_TOKENS, TURN_FORWARD_TOKENS_CPU

    engine = Engine(make_tiny_llama(), stop_ids=[0], watch=WATCH)
    assert engine.forward_tokens == FORWARD_TOKENS > TURN_FORWARD_TOKENS_CPU
    engine.take_turns()
    assert engine.forward_tokens == TURN_FORWARD_TOKENS_CPU
    assert Engine(make_tiny_llama(), stop_ids=[0], watch=WATCH, forward_tokens=9).forward_tokens == 9
