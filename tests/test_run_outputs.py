"""Runs that write the same output: a resume with other settings, a rerun over finished answers, two runs at once.

Each test reproduces the mistake or the race of issue 16 (items 3, 5 and 6) with a fake answerer in place of
the model: the file logic is the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openrag.eval.evaluate import evaluate
from openrag.eval.request import EvalRequest
from openrag.eval.runner import metrics_path, read_records

N = 12


@pytest.fixture
def data(tmp_path) -> Path:
    rows = [{"id": f"q{i}", "question": f"Which city lies on river{i}?", "answers": [f"city{i}"],
             "ctxs": [{"title": f"Gold {i}", "text": f"city{i} lies on river{i}"}, {"title": "Other", "text": "nothing here"}]}
            for i in range(N)]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def request(data, out, **kw) -> EvalRequest:
    return EvalRequest(task="hotpotqa", dataset=str(data), output_file=out, progress=False, batch_size=2, **kw)


def factory(settings: dict | None = None, during=None, die_after: int | None = None, loads: list | None = None):
    """A stand-in for loading a model: answers each question with its gold city; ``during(batch_number)`` runs
    before each batch; ``die_after`` batches, the run is killed (KeyboardInterrupt)."""

    def make(req, both):
        if loads is not None:
            loads.append(req)
        calls = []

        def answer(batch):
            calls.append(batch)
            if during is not None:
                during(len(calls))
            if die_after is not None and len(calls) > die_after:
                raise KeyboardInterrupt
            return [{"prediction": q.example.answers[0], "retrieved": True} for q in batch]

        return answer, dict(settings or {})

    return make


def killed_run(data, out, **kw):
    with pytest.raises(KeyboardInterrupt):
        evaluate(request(data, out, **kw), factory(die_after=2))
    assert len(read_records(out)) == 4


def files(out: Path) -> dict[str, bytes]:
    """The run's answers and metrics files, as they are now."""
    return {p.name: p.read_bytes() for p in (out, metrics_path(out)) if p.exists()}


# ----------------------------------------------------------------------------------- 3: resume, other settings


SETTINGS = {"model_name": "a/model", "options": {"mode": "always_retrieve", "max_new_tokens": 100}}


@pytest.mark.parametrize("changed, named", [({"model_name": "b/model"}, "model"),
                                            ({"options": {"mode": "no_retrieval", "max_new_tokens": 100}}, "mode"),
                                            ({"options": {"mode": "always_retrieve", "max_new_tokens": 5}}, "max_new_tokens")])
def test_resume_with_other_settings_is_refused_and_names_them(data, tmp_path, changed, named):
    out = tmp_path / "run.jsonl"
    killed_run(data, out, **SETTINGS)
    before = files(out)
    with pytest.raises(ValueError, match=rf"cannot resume .*other settings \({named}: .* there, .* now\)"):
        evaluate(request(data, out, resume=True, **{**SETTINGS, **changed}), factory())
    assert files(out) == before  # nothing appended, nothing rewritten


def test_resume_refused_before_loading_when_the_model_differs(data, tmp_path):
    out = tmp_path / "run.jsonl"
    killed_run(data, out, model_name="a/model")
    loads = []
    with pytest.raises(ValueError, match="model: 'a/model' there, 'b/model' now"):
        evaluate(request(data, out, resume=True, model_name="b/model"), factory(loads=loads))
    assert loads == []  # refused before the (possibly large) model is loaded


def test_resume_refused_when_the_loaded_model_answers_otherwise(data, tmp_path):
    """Settings only the loaded model decides (its prompt format) are checked once it is loaded."""
    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(request(data, out), factory({"prompt_format": "training"}, die_after=2))
    with pytest.raises(ValueError, match="prompt_format: 'training' there, 'released' now"):
        evaluate(request(data, out, resume=True), factory({"prompt_format": "released"}))
    assert len(read_records(out)) == 4


def test_resume_refused_when_the_model_computes_in_another_dtype(data, tmp_path):
    """A run begun in float32 (recorded, or from before the dtype was recorded) and resumed where the model loads in
    bf16 by default (a CPU with fast bf16) would mix two precisions' answers."""
    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(request(data, out), factory(die_after=2))  # no dtype recorded: an older run, float32
    with pytest.raises(ValueError, match="dtype: 'float32' there, 'bfloat16' now"):
        evaluate(request(data, out, resume=True), factory({"dtype": "bfloat16"}))
    summary = evaluate(request(data, out, resume=True), factory({"dtype": "float32"}))
    assert summary["complete"] and summary["dtype"] == "float32"


def test_resume_with_the_same_settings_finishes_the_run(data, tmp_path):
    out = tmp_path / "run.jsonl"
    killed_run(data, out, options={"max_new_tokens": 7})
    summary = evaluate(request(data, out, resume=True, options={"max_new_tokens": 7}), factory())
    assert summary["complete"] and summary["n"] == N and summary["em"] == 1.0
    assert [r["index"] for r in read_records(out)] == list(range(N))


def test_resume_without_a_settings_record_is_refused(data, tmp_path):
    out = tmp_path / "run.jsonl"
    killed_run(data, out)
    metrics_path(out).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="missing or unreadable; pass --overwrite"):
        evaluate(request(data, out, resume=True), factory())


def test_resume_knows_the_dataset_by_its_file_not_its_spelling(data, tmp_path, monkeypatch):
    """Issue 31, item 3: the same relative name from another folder is another dataset (refused before loading);
    the same file spelled otherwise is the same dataset (resumed)."""
    out = tmp_path / "run.jsonl"
    monkeypatch.chdir(tmp_path)
    killed_run("dev.jsonl", out)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dev.jsonl").write_text(data.read_text().replace("river", "lake"))  # another dataset, same spelling
    monkeypatch.chdir(other)
    before, loads = files(out), []
    with pytest.raises(ValueError, match=rf"cannot resume .*other settings \(dataset: '{tmp_path}/dev.jsonl' there, "
                                         rf"'{other}/dev.jsonl' now; dataset_fingerprint: "):
        evaluate(request("dev.jsonl", out, resume=True), factory(loads=loads))
    assert loads == [] and files(out) == before  # refused before loading; nothing appended
    monkeypatch.chdir(other)
    summary = evaluate(request(f"../elsewhere/../{data.name}", out, resume=True), factory())
    assert summary["complete"] and summary["n"] == N and [r["index"] for r in read_records(out)] == list(range(N))


def test_resume_refuses_a_dataset_file_that_changed(data, tmp_path):
    out = tmp_path / "run.jsonl"
    killed_run(data, out)
    size = data.stat().st_size
    data.write_text(data.read_text().replace("city", "town"))  # same path, same size, other rows
    assert data.stat().st_size == size
    with pytest.raises(ValueError, match=r"cannot resume .*other settings \(dataset_fingerprint: \{'bytes': \d+, 'sha256'"):
        evaluate(request(data, out, resume=True), factory())
    assert len(read_records(out)) == 4


# --------------------------------------------------------------------------- 6: a rerun over finished answers


def test_rerun_without_resume_keeps_the_finished_answers(data, tmp_path):
    out = tmp_path / "run.jsonl"
    evaluate(request(data, out), factory())
    before = files(out)
    loads = []
    with pytest.raises(ValueError, match=rf"already holds {N} answers; pass --resume .* --overwrite"):
        evaluate(request(data, out, options={"max_new_tokens": 5}), factory(loads=loads))
    assert loads == []  # refused at once, before loading anything
    assert files(out) == before


def test_overwrite_replaces_and_never_leaves_stale_metrics(data, tmp_path):
    out = tmp_path / "run.jsonl"
    evaluate(request(data, out), factory())
    with pytest.raises(KeyboardInterrupt):
        evaluate(request(data, out, overwrite=True, options={"max_new_tokens": 5}), factory(die_after=1))
    metrics = json.loads(metrics_path(out).read_text())
    assert len(read_records(out)) == 2
    assert metrics["complete"] is False and metrics["max_new_tokens"] == 5  # describes the run the file holds
    with pytest.raises(ValueError, match="give one"):
        evaluate(request(data, out, overwrite=True, resume=True), factory())


# ---------------------------------------------------------------------------------- 5: two runs, one output


def test_second_eval_to_the_same_file_stops_and_names_the_first(data, tmp_path):
    from openrag.outputs import OutputBusy

    out = tmp_path / "run.jsonl"
    seen = []

    def second_run(batch_number):
        if batch_number == 2:
            with pytest.raises(OutputBusy, match=rf"being written by another run \(pid {os.getpid()}, openrag eval"):
                evaluate(request(data, out), factory())
            seen.append(batch_number)

    summary = evaluate(request(data, out), factory(during=second_run))
    assert seen == [2] and summary["complete"] and summary["n"] == N
    assert [r["index"] for r in read_records(out)] == list(range(N))  # whole lines, each once
    assert not (tmp_path / ".run.jsonl.lock").exists()


HOLDER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("outputs", sys.argv[1])
    outputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(outputs)
    with outputs.output_lock(sys.argv[2], "openrag eval"):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_lock_names_another_process_and_dies_with_it(data, tmp_path):
    """A lock held by another process (a run in another terminal) is refused with its pid; killed, it holds nothing."""
    import openrag.outputs as outputs
    from openrag.outputs import OutputBusy

    out = tmp_path / "run.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, outputs.__file__, str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy, match=rf"pid {holder.pid}, openrag eval"):
            evaluate(request(data, out), factory())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert evaluate(request(data, out), factory())["complete"]  # a killed holder leaves no stale lock


def test_second_index_build_to_the_same_folder_stops_and_names_the_first(tmp_path, monkeypatch, capsys):
    import openrag.retrieval as retrieval
    from openrag.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "title": f"T{i}", "text": f"passage {i} about rivers"}) + "\n"
                              for i in range(20)))
    out = tmp_path / "docs.index"
    build = retrieval.build_index
    started, codes = [], []

    def build_while_another_starts(*args, **kwargs):
        if not started:  # the first build: a second one starts meanwhile
            started.append(True)
            with pytest.raises(SystemExit) as second:
                main(["index", "--corpus", str(corpus), "--output", str(out), "--overwrite", "--quiet"])
            codes.append(second.value.code)
        return build(*args, **kwargs)

    monkeypatch.setattr(retrieval, "build_index", build_while_another_starts)
    with pytest.raises(SystemExit) as first:
        main(["index", "--corpus", str(corpus), "--output", str(out), "--quiet"])
    assert first.value.code == 0 and codes == [2]
    err = capsys.readouterr().err
    assert f"{out} is being written by another run (pid {os.getpid()}, openrag index" in err
    assert retrieval.open_index(out).search(["rivers"], top_k=1)[0]


# ---------------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_the_old_file_whole_on_failure(tmp_path):
    from openrag.outputs import write_jsonl

    target = tmp_path / "train.jsonl"

    def rows():
        yield {"a": 1}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(target, rows())
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary file
    assert write_jsonl(target, [{"a": "é"}, {"a": 2}]) == 2
    assert target.read_bytes() == '{"a": "é"}\n{"a": 2}\n'.encode("utf-8")
    with pytest.raises(KeyboardInterrupt):
        write_jsonl(target, rows())
    assert target.read_bytes() == '{"a": "é"}\n{"a": 2}\n'.encode("utf-8")  # the old file, untouched
    assert [f.name for f in tmp_path.iterdir()] == ["train.jsonl"]


def test_atomic_write_of_json_and_bytes(tmp_path):
    from openrag.outputs import write_atomic, write_json

    write_json(tmp_path / "new" / "m.json", {"title": "Zürich"})  # the folder is made
    assert (tmp_path / "new" / "m.json").read_text(encoding="utf-8") == '{\n  "title": "Zürich"\n}\n'
    with write_atomic(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    with pytest.raises(ValueError, match="mode"):
        with write_atomic(tmp_path / "c", "a"):
            pass
