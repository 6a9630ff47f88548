"""One declaration per concept: the copies that must stay equal are computed once, and tied here.

* the sweep's decision at a threshold is a real run's decision at that threshold (same answer, too);
* eval's BM25 ranking of a row's paragraphs is the BM25 index's ranking of them;
* every command's flags, the HTTP request fields and the CLI's choices come from the registries;
* the engine's own KV cache goes through whichever keyword the model's forward names.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

import pytest
import torch

from openrag.answer import AnswerOptions, OpenRAG
from openrag.answer.engine import Engine
from openrag.answer.kvcache import KVCache, cache_keyword
from openrag.answer.options import COMMANDS, option_fields
from openrag.answer.scoring import RULES, decide
from openrag.eval.answerer import answer_options, to_result
from openrag.eval.sweep import sweep
from openrag.tasks import EVAL_TASKS, TASKS

from .conftest import make_tiny_llama

QUESTIONS = ["Who directed Kiss and Tell?", "Which city is the capital of France?", "When was the owl named?",
             "What does the eel stun?"]
PASSAGES = [[{"title": "Kiss and Tell", "text": "Kiss and Tell is a 1945 film directed by Richard Wallace."},
             {"title": "Richard Wallace", "text": "Richard Wallace was an American film director."}],
            [{"title": "Paris", "text": "Paris is the capital and largest city of France."}],
            [{"title": "Owl", "text": "Owls are nocturnal birds of prey."},
             {"title": "Eel", "text": "Eels are elongated fish."}],
            [{"title": "Eel", "text": "The electric eel stuns its prey."}]]


# -- the retrieval decision: sweep == real run ------------------------------------------------------------

def _thresholds(values: list[float]) -> list[float]:
    """Thresholds on both sides of every value, and at the values themselves (the edge of > and <)."""
    values = sorted(set(values))
    mids = [(a + b) / 2 for a, b in zip(values, values[1:])]
    return [values[0] - 0.01, *values, *mids, values[-1] + 0.01]


@pytest.mark.parametrize("rule", list(RULES))
def test_sweep_decision_equals_a_real_run_at_that_threshold(tiny_pair, rule):
    model, tokenizer = tiny_pair
    rag = OpenRAG(model, tokenizer, AnswerOptions(max_new_tokens=6, task="hotpotqa"))
    req = argparse.Namespace(options={}, ndocs=3, task="hotpotqa", task_info=TASKS["hotpotqa"], batch_size=8)
    both = [to_result(a, both=True) for a in rag.answer_batch(QUESTIONS, PASSAGES, **answer_options(req, both=True))]
    records = [{**r, "id": str(i), "metrics": {"em": float(i)}, "no_retrieval": {**r["no_retrieval"], "metrics": {"em": -1.0}}}
               for i, r in enumerate(both)]
    signal = RULES[rule].signal
    thresholds = _thresholds([r["no_retrieval"][signal] for r in records])
    points = {p.threshold: p for p in sweep(records, [rule], thresholds, observed=False) if p.rule == rule}
    seen = set()
    for t in thresholds:
        real = rag.answer_batch(QUESTIONS, PASSAGES, **answer_options(req, both=False), retrieval_rule=rule, threshold=t)
        swept = [decide(rule, r["no_retrieval"][signal], t) for r in records]
        assert [a.retrieved for a in real] == swept, t
        assert [a.text for a in real] == [r["prediction"] if s else r["no_retrieval"]["prediction"]
                                          for r, s in zip(records, swept)]
        assert points[t].retrieval_frequency == sum(swept) / len(swept)
        seen.add(tuple(swept))
    assert len(seen) > 2  # the thresholds split the questions more than one way


def test_decide_follows_each_rules_side():
    for rule in RULES.values():
        assert decide(rule.name, 0.6, 0.5) == rule.retrieve_above
        assert decide(rule.name, 0.4, 0.5) == (not rule.retrieve_above)
        assert not decide(rule.name, 0.5, 0.5)  # strict on both sides
        assert decide(rule.name, None, 0.5)  # no value: no confidence, retrieve


# -- BM25: eval's ranking == the index's ---------------------------------------------------------------

CORPUS = [{"id": "cat", "title": "Cat", "text": "The cat is a small domesticated carnivorous mammal that purrs."},
          {"id": "dog", "title": "Dog", "text": "The dog is a domesticated descendant of the wolf and barks at cats."},
          {"id": "owl", "title": "Owl", "text": "Owls are nocturnal birds of prey with large eyes; owls hunt mice."},
          {"id": "eel", "title": "Eel", "text": "Eels are elongated fish; the electric eel stuns its prey."},
          {"id": "mouse", "title": "Mouse", "text": "A mouse is a small rodent that cats and owls hunt."}]


@pytest.mark.parametrize("query", ["which domesticated animal purrs", "what do owls hunt at night",
                                   "electric fish prey", "domesticated wolf descendant barks"])
def test_eval_bm25_ranking_equals_the_index(tmp_path, query):
    from openrag.eval.passages import bm25_order
    from openrag.passage import titled_text
    from openrag.retrieval import IndexSettings, build_index
    from openrag.retrieval.corpus import PassageStore

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    index = build_index(corpus, tmp_path / "idx", IndexSettings(kind="bm25"), show_progress=False)
    hits = index.search([query], top_k=len(CORPUS))[0]
    assert hits and len({h.score for h in hits}) == len(hits)  # no ties: the order is the scores'
    texts = [titled_text(p.title, p.text) for p in PassageStore(tmp_path / "idx")]
    order = bm25_order(query, texts)
    assert [CORPUS[i]["id"] for i in order[: len(hits)]] == [h.id for h in hits]


# -- flags and request fields from AnswerOptions; choices from the registries ------------------------------

def _flags(command: str) -> dict[str, argparse.Action]:
    from openrag.cli import build_parser

    parser = build_parser(with_flags=[command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


@pytest.mark.parametrize("command", ["ask", "eval", "serve"])
def test_every_option_is_a_flag_of_each_command(command):
    flags = _flags(command)
    for f in option_fields(command):
        assert f.name in flags, f.name
        if "choices" in f.metadata:
            assert tuple(flags[f.name].choices) == tuple(f.metadata["choices"])
        if not COMMANDS[command].given_only:
            assert flags[f.name].default == COMMANDS[command].defaults.get(f.name, f.default)
    assert tuple(flags["retrieval_rule"].choices) == tuple(RULES)


def test_eval_flags_keep_the_seeds_defaults():
    from openrag.cli import build_parser

    args = build_parser(with_flags=["eval"]).parse_args(["eval", "--task", "hotpotqa", "--use_utility", "--w_use", "0.5"])
    from openrag.commands.eval import _request

    req = _request(args)
    assert req.options == {"use_utility": True, "w_use": 0.5} and req.ndocs == 3 and req.batch_size == 8
    options = answer_options(req, both=False)
    assert (options["use_seqscore"], options["use_groundness"], options["use_utility"]) == (False, False, True)
    assert tuple(_flags("eval")["task"].choices) == EVAL_TASKS
    assert set(EVAL_TASKS) < set(TASKS) and _flags("ask")["task"].choices == tuple(TASKS)


def test_request_fields_are_the_options():
    from openrag.serve.schemas import OPTION_FIELDS, AnswerRequest

    # Written out (README, "Serve"), not read from the declarations under test: prompt_format, batching and the
    # passage cut stay the server's (answer.options.COMMANDS["request"]).
    assert OPTION_FIELDS == ("mode", "retrieval_rule", "threshold", "ndocs", "chain", "max_new_tokens", "use_seqscore",
                             "use_groundness", "use_utility", "w_rel", "w_sup", "w_use", "task", "closed", "query")
    assert set(OPTION_FIELDS) <= {f.name for f in fields(AnswerOptions)}
    with pytest.raises(ValueError, match="retrieval_rule"):
        AnswerRequest(question="q", retrieval_rule="coin")
    assert AnswerRequest(question="q", retrieval_rule="meanp", ndocs=2).options() == {"retrieval_rule": "meanp", "ndocs": 2}


def test_index_kinds_come_from_one_registry():
    from openrag.retrieval import IndexSettings
    from openrag.retrieval.index import KINDS

    assert tuple(_flags("index")["kind"].choices) == tuple(KINDS)
    for kind in KINDS.values():
        recorded = IndexSettings(kind=kind.name).to_dict()
        assert set(recorded) == {"kind", "passage_words", "passage_overlap", *kind.settings}


def test_every_task_has_a_prompt_and_a_plain_prompt():
    from openrag.answer.prompts import question_prompt
    from openrag.eval.baseline import task_request
    from openrag.eval.metrics import METRICS

    for task in TASKS.values():
        choices = ["a", "b", "c", "d"] if task.needs_choices else None
        assert question_prompt(task.name, "Q?", choices).endswith("### Response:\n")
        assert task_request(task.name, "Q?", choices).startswith(task.plain_instruction)
        assert task.metric is None or task.metric in METRICS


# -- the KV cache ---------------------------------------------------------------------------------------

class OlderSignature(torch.nn.Module):
    """A model whose forward names its cache ``past_key_values`` (transformers before 5.24)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.seen = inner, inner.config, []

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        self.seen.append(type(past_key_values).__name__)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep, **{cache_keyword(self.inner): past_key_values})


def test_the_engine_passes_its_own_cache_under_the_models_keyword():
    model = make_tiny_llama()
    older = OlderSignature(model)
    assert cache_keyword(older) == "past_key_values"
    assert KVCache.__mro__ == (KVCache, object)  # nothing of transformers underneath
    prompts = [[5, 9, 14, 3, 7], [11, 4, 8]]
    rows = [(0, prompts[0] + [21, 22]), (1, prompts[1] + [30]), (0, prompts[0])]
    new = Engine(model, stop_ids=[2]).generate(Engine(model, stop_ids=[2]).prefill(prompts), rows, 5)
    engine = Engine(older, stop_ids=[2])
    old = engine.generate(engine.prefill(prompts), rows, 5)
    assert set(older.seen) == {"KVCache"}
    assert [r.tokens for r in old] == [r.tokens for r in new]
    assert [lp for r in old for lp in r.logprobs] == pytest.approx([lp for r in new for lp in r.logprobs], abs=1e-5)


def test_cache_keyword_refuses_a_model_without_one():
    class NoCache(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    with pytest.raises(TypeError, match="takes no KV cache"):
        cache_keyword(NoCache())
