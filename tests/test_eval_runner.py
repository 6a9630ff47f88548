"""The answering loop's files: one line per answer, resume after a kill, shards that combine exactly."""

from __future__ import annotations

import json

import pytest

from openrag.data.examples import QAExample
from openrag.passage import Passage
from openrag.eval.request import EvalRequest
from openrag.eval.runner import combine_shards, metrics_path, prepare_questions, read_records, run_shard, shard_path

SPEED_KEYS = {"seconds", "questions_per_second", "load_seconds", "wall_seconds", "throughput"}


def make_examples(n: int = 11) -> list[QAExample]:
    examples = []
    for i in range(n):
        passages = [Passage(f"T{i}-{j}", f"distractor text {j} about nothing", is_gold=False) for j in range(4)]
        passages.append(Passage(f"Gold {i}", f"city{i} is the answer to question {i} about river{i}", is_gold=True))
        examples.append(QAExample(f"q{i}", f"Which city lies on river{i}?", [f"city{i}", f"town{i}"], passages, False, "fake", f"fake:{i + 1}"))
    return examples


def fake_answerer(batch):
    """Deterministic: right on even indices, alias on multiples of 3, wrong otherwise; retrieves on odd."""
    out = []
    for q in batch:
        i = q.index
        text = f"town{i}" if i % 3 == 0 else (f"city{i}" if i % 2 == 0 else "somewhere")
        out.append({"prediction": text, "retrieved": i % 2 == 1, "candidates": [{"passage": {"title": p.title}} for p in q.passages]})
    return out


def config(tmp_path, name="out.jsonl", **kw):
    return EvalRequest(task="hotpotqa", dataset="fake.jsonl", output_file=tmp_path / name, ndocs=2, progress=False, **kw)


def without_speed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in SPEED_KEYS}


def records_without_speed(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(path)]


def test_one_line_per_question_and_summary(tmp_path):
    cfg = config(tmp_path)
    summary = run_shard(cfg, prepare_questions(make_examples(), cfg), fake_answerer)
    records = read_records(cfg.output_file)
    assert [r["index"] for r in records] == list(range(11))
    assert {"id", "question", "answers", "prediction", "retrieved", "candidates", "metrics"} <= set(records[0])
    # em against the first gold: even and not a multiple of 3 -> 2, 4, 8, 10; aliases also 0, 3, 6, 9
    assert summary["em"] == pytest.approx(4 / 11)
    assert summary["em_any"] == pytest.approx(8 / 11)
    assert summary["retrieval_frequency"] == pytest.approx(5 / 11)
    assert summary["gold_recall"] == 1.0  # BM25 puts the only passage naming river{i} first
    assert all(r["ranked_by"] == "bm25" for r in records)
    assert json.loads(metrics_path(cfg.output_file).read_text()) == summary


def test_limit_takes_the_first_questions(tmp_path):
    cfg = config(tmp_path, limit=4)
    assert run_shard(cfg, prepare_questions(make_examples(), cfg), fake_answerer)["n"] == 4


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path):
    full = config(tmp_path, "full.jsonl", batch_size=2)
    expected = run_shard(full, prepare_questions(make_examples(), full), fake_answerer)

    killed = config(tmp_path, "killed.jsonl", batch_size=2)
    calls = []

    def dies_on_third_batch(batch):
        calls.append(batch)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake_answerer(batch)

    with pytest.raises(KeyboardInterrupt):
        run_shard(killed, prepare_questions(make_examples(), killed), dies_on_third_batch)
    with open(killed.output_file, "a") as f:
        f.write('{"index": 4, "id": "q4", "pred')  # a line cut off in mid-write
    assert len(read_records(killed.output_file)) == 4

    resumed_config = config(tmp_path, "killed.jsonl", batch_size=2, resume=True)
    seen = []

    def counting(batch):
        seen.extend(q.index for q in batch)
        return fake_answerer(batch)

    resumed = run_shard(resumed_config, prepare_questions(make_examples(), resumed_config), counting)
    assert seen == list(range(4, 11))  # nothing answered twice
    assert without_speed(resumed) == without_speed(expected)
    assert records_without_speed(killed.output_file) == records_without_speed(full.output_file)


def test_resume_refuses_answers_of_other_data(tmp_path):
    cfg = config(tmp_path)
    run_shard(cfg, prepare_questions(make_examples(), cfg), fake_answerer)
    other = make_examples()
    other[2].id = "different"
    again = config(tmp_path, resume=True)
    with pytest.raises(ValueError, match="not a question of this run"):
        run_shard(again, prepare_questions(other, again), fake_answerer)


def test_shards_combine_to_the_unsharded_result(tmp_path):
    whole = config(tmp_path, "whole.jsonl")
    expected = run_shard(whole, prepare_questions(make_examples(), whole), fake_answerer)

    target = tmp_path / "sharded.jsonl"
    for rank in range(3):
        cfg = config(tmp_path, "sharded.jsonl", world_size=3, rank=rank)
        questions = prepare_questions(make_examples(), cfg)
        assert [q.index for q in questions] == list(range(rank, 11, 3))
        run_shard(cfg, questions, fake_answerer)
        combined = combine_shards(target, 3)
        assert (combined is None) == (rank < 2)
    assert shard_path(target, 1, 3).name == "sharded.rank1-of-3.jsonl"
    assert records_without_speed(target) == records_without_speed(whole.output_file)
    expected_fields = without_speed(expected) | {"world_size": 3}
    assert without_speed(combined) == expected_fields
    assert json.loads(metrics_path(target).read_text()) == combined
    metrics_path(shard_path(target, 1, 3)).write_text('{"complete": tr')  # a damaged shard summary
    with pytest.raises(ValueError, match=r"sharded.rank1-of-3.metrics.json:1: not valid JSON .*rerun shard 1 of 3"):
        combine_shards(target, 3)


def test_bad_rank_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--rank 3"):
        config(tmp_path, world_size=3, rank=3)
