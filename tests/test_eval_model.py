"""``openrag eval`` through the real engine with a tiny random Llama (junk answers, exact file logic)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from openrag.eval.answerer import answer_options, rag_answerer
from openrag.eval.evaluate import evaluate, evaluate_sweep
from openrag.eval.request import EvalRequest
from openrag.eval.runner import read_records

from .conftest import make_tiny_llama_for

DATA = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else Path(__file__).resolve().parents[2] / "shared" / "data"
SPEED = {"seconds", "questions_per_second", "load_seconds", "wall_seconds", "throughput"}


@pytest.fixture(scope="module")
def tiny_pair(smollm2_tokenizer):
    from openrag.model.reflection import add_reflection_tokens

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    add_reflection_tokens(None, tokenizer)
    return make_tiny_llama_for(tokenizer, max_position_embeddings=2048), tokenizer


@pytest.fixture
def hotpot4(tmp_path):
    source = DATA / "hotpotqa" / "hotpotqa_dev_ircot500.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} is not here")
    path = tmp_path / "hotpot4.jsonl"
    path.write_text("".join(source.read_text().splitlines(keepends=True)[:4]))
    return path


def tiny_factory(tiny_pair, fail_after: int | None = None):
    from openrag.answer import AnswerOptions, OpenRAG

    model, tokenizer = tiny_pair

    def factory(req, both):
        rag = OpenRAG(model, tokenizer, AnswerOptions(**answer_options(req, both)))
        answer = rag_answerer(rag, both)
        calls = []

        def maybe_dies(batch):
            calls.append(batch)
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt
            return answer(batch)

        return maybe_dies, {}

    return factory


def request(data, out, **kw):
    options = {"mode": "always_retrieve", "max_new_tokens": 6, "use_seqscore": True, "use_utility": True, "use_groundness": True, "w_use": 0.5}
    kw = {"ndocs": 2, "batch_size": 2, **kw}
    return EvalRequest(task="hotpotqa", dataset=str(data), output_file=out, progress=False, options=options, **kw)


def strip(summary):
    return {k: v for k, v in summary.items() if k not in SPEED}


def lines(path):
    return [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in read_records(path)]


def test_engine_answers_are_recorded(tiny_pair, hotpot4, tmp_path):
    summary = evaluate(request(hotpot4, tmp_path / "a.jsonl"), tiny_factory(tiny_pair))
    records = read_records(tmp_path / "a.jsonl")
    assert summary["n"] == 4 and summary["retrieval_frequency"] == 1.0
    for r in records:
        assert isinstance(r["prediction"], str) and r["retrieved"] is True
        assert len(r["candidates"]) == 2
        assert {"passage", "text", "score", "relevance", "groundedness", "utility", "seq_score"} <= set(r["candidates"][0])
    assert summary["use_seqscore"] is True and summary["w_use"] == 0.5 and summary["task"] == "hotpotqa"


def test_resume_after_kill_matches_uninterrupted_run(tiny_pair, hotpot4, tmp_path):
    expected = evaluate(request(hotpot4, tmp_path / "full.jsonl"), tiny_factory(tiny_pair))
    with pytest.raises(KeyboardInterrupt):
        evaluate(request(hotpot4, tmp_path / "cut.jsonl"), tiny_factory(tiny_pair, fail_after=1))
    assert len(read_records(tmp_path / "cut.jsonl")) == 2
    resumed = evaluate(request(hotpot4, tmp_path / "cut.jsonl", resume=True), tiny_factory(tiny_pair))
    assert strip(resumed) == strip(expected)
    assert lines(tmp_path / "cut.jsonl") == lines(tmp_path / "full.jsonl")


def test_shards_combine_to_unsharded_run(tiny_pair, hotpot4, tmp_path):
    whole = evaluate(request(hotpot4, tmp_path / "whole.jsonl", batch_size=1), tiny_factory(tiny_pair))
    for rank in range(2):
        combined = evaluate(request(hotpot4, tmp_path / "sh.jsonl", batch_size=1, world_size=2, rank=rank), tiny_factory(tiny_pair))
    assert strip(combined) == strip(whole) | {"world_size": 2}
    assert lines(tmp_path / "sh.jsonl") == lines(tmp_path / "whole.jsonl")


def test_sweep_stores_both_answers_and_rule_values(tiny_pair, hotpot4, tmp_path):
    summary, paths = evaluate_sweep(request(hotpot4, tmp_path / "sw.jsonl"), thresholds=[0.0, 0.5, 1.0], make_answerer=tiny_factory(tiny_pair))
    records = read_records(tmp_path / "sw.jsonl")
    for r in records:
        alt = r["no_retrieval"]
        assert isinstance(alt["prediction"], str) and "metrics" in alt
        for key in ("p_retrieve", "minp", "meanp"):
            assert 0.0 <= alt[key] <= 1.0
        assert alt["minp"] <= alt["meanp"]
    points = json.loads(paths["json"].read_text())
    token_at_1 = next(p for p in points if p["rule"] == "token" and p["threshold"] == 1.0)
    assert token_at_1["retrieval_frequency"] == 0.0
    minp_at_1 = next(p for p in points if p["rule"] == "minp" and p["threshold"] == 1.0)
    assert minp_at_1["retrieval_frequency"] == 1.0


def test_cli_with_seed_flags(tiny_pair, hotpot4, tmp_path, capsys):
    from openrag.cli import main

    model, tokenizer = tiny_pair
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "eval" / "hotpotqa.jsonl"
    argv = [
        "eval", "--model_name", str(folder), "--world_size", "1", "--w_use", "0.5", "--dataset", str(hotpot4),
        "--task", "hotpotqa", "--mode", "adaptive_retrieval", "--max_new_tokens", "4", "--threshold", "0.0",
        "--metric", "hotpotem", "--ndocs", "3", "--use_groundness", "--use_utility", "--use_seqscore",
        "--output_file", str(out), "--limit", "2", "--device", "cpu", "--no_progress",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    summary = json.loads((tmp_path / "eval" / "hotpotqa.metrics.json").read_text())
    assert summary["n"] == 2 and summary["ndocs"] == 3 and summary["threshold"] == 0.0
    assert {"n", "em", "f1", "precision", "recall", "retrieval_frequency", "seconds", "questions_per_second", "load_seconds"} <= set(summary)
    assert "hotpotqa: em" in capsys.readouterr().out


def test_dtype_reaches_the_loaded_model_and_the_resume_settings(hotpot4, monkeypatch):
    from openrag.answer.pipeline import OpenRAG
    from openrag.cli import build_parser
    from openrag.eval.answerer import pipeline_answerer_factory

    seen = {}

    def loading(cls, name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("loaded")

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(loading))
    req = EvalRequest(task="hotpotqa", dataset=str(hotpot4), dtype="bfloat16")
    assert req.settings["dtype"] == "bfloat16"  # a resumed run in another dtype is refused
    assert "dtype" not in EvalRequest(task="hotpotqa", dataset=str(hotpot4)).settings  # known once loaded (the answerer's)
    with pytest.raises(RuntimeError, match="loaded"):
        pipeline_answerer_factory(req, False)
    assert seen["dtype"] == "bfloat16"
    for command in (["serve"], ["ask", "q?"], ["eval", "--task", "hotpotqa"]):
        assert build_parser().parse_args([*command, "--dtype", "bfloat16"]).dtype == "bfloat16"
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--dtype", "float64"])
