"""Mistakes in the user's input are reported at once, as one line naming the file, line or field, and the fix
(issue 16, items 8 and 9): a missing local file is not a hub name, an empty dataset is not a result, bytes that
are not UTF-8 have a file and a line, and no command ends in a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openrag.cli import main
from openrag.data.readers import is_hub_name, read_examples
from openrag.eval.evaluate import evaluate
from openrag.eval.request import EvalRequest
from openrag.passage import Passage

ROW = {"id": "q0", "question": "Which city lies on the Seine?", "answers": ["Paris"],
       "ctxs": [{"title": "Paris", "text": "Paris lies on the Seine."}]}


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return done.value.code, err


def never_loaded(req, both):
    raise AssertionError("the model was loaded")


@pytest.fixture
def hub_calls(monkeypatch):
    """The names sent to the hub (none are: a fake hub answers with one row)."""
    import openrag.data.readers as readers

    calls = []

    def fake_hub(name, task):
        calls.append(name)
        return name, iter([(1, ROW)])

    monkeypatch.setattr(readers, "_hub_rows", fake_hub)
    return calls


# ------------------------------------------------------------------------- 8: a missing local file is local


@pytest.mark.parametrize("name", ["in/nonexist.jsonl", "data/missing", "./in/x", "../in/x", "~/no/such.json", "/no/such/file"])
def test_a_missing_local_path_is_an_error_not_a_hub_request(tmp_path, monkeypatch, hub_calls, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no data file at {re.escape(name)}: no such file"):
        list(read_examples(name))
    assert hub_calls == []


def test_eval_of_a_missing_relative_file_stops_at_once(tmp_path, monkeypatch, hub_calls, capsys):
    import openrag.eval.answerer as answerer

    monkeypatch.setattr(answerer, "pipeline_answerer_factory", never_loaded)
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["eval", "--task", "hotpotqa", "--dataset", "in/nonexist.jsonl", "--output_file", "out.jsonl",
                         "--no_progress"], capsys)
    assert code == 2 and "no data file at in/nonexist.jsonl: no such file" in err and hub_calls == []


def test_hub_names_still_go_to_the_hub(tmp_path, monkeypatch, hub_calls):
    monkeypatch.chdir(tmp_path)
    assert [ex.id for ex in read_examples("shayekh/openrag_bench", task="hotpotqa")] == ["q0"]
    assert hub_calls == ["shayekh/openrag_bench"]
    assert is_hub_name("owner/name") and is_hub_name("HuggingFaceTB/smol-smoltalk")
    assert not is_hub_name("in/dev.jsonl") and not is_hub_name("owner/name/extra") and not is_hub_name("./owner/name")


# ---------------------------------------------------------------------------------------- 9: smaller ones


@pytest.mark.parametrize("content, said", [("", "no question to answer; check"),
                                           ("\n\n", "no question to answer; check"),
                                           (json.dumps({**ROW, "answers": []}) + "\n", "1 bad rows skipped")])
def test_a_dataset_without_questions_fails(tmp_path, content, said):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    req = EvalRequest(task="hotpotqa", dataset=str(data), output_file=tmp_path / "out.jsonl", progress=False)
    with pytest.raises(ValueError, match=f"{re.escape(str(data))}: .*{said}"):
        evaluate(req, never_loaded)


def latin1_file(path, good_lines: int = 2):
    rows = [json.dumps({**ROW, "id": f"q{i}"}) for i in range(good_lines)]
    path.write_bytes(("\n".join(rows) + "\n").encode() + json.dumps({**ROW, "question": "Qu'est-ce qu'un caf\u00e9?"}, ensure_ascii=False).encode("latin-1") + b"\n")
    return path


def test_non_utf8_eval_data_names_file_and_line(tmp_path):
    data = latin1_file(tmp_path / "dev.jsonl")
    req = EvalRequest(task="hotpotqa", dataset=str(data), output_file=tmp_path / "out.jsonl", progress=False)
    with pytest.raises(ValueError, match=rf"{re.escape(str(data))}:3: not UTF-8 text \(byte 0xe9 at column \d+\); convert"):
        evaluate(req, never_loaded)


def test_non_utf8_data_build_input_names_file_and_line(tmp_path, capsys):
    data = latin1_file(tmp_path / "train.jsonl", good_lines=4)
    code, err = run_cli(["data", "build", str(data), "--output", str(tmp_path / "out.jsonl"), "--tokenizer", "none"], capsys)
    assert code == 2 and f"{data}:5: not UTF-8 text" in err


def test_ask_passages_errors_name_the_file_and_line(tmp_path):
    from openrag.data.passage_files import read_passages

    lines = tmp_path / "p.jsonl"
    lines.write_text('{"title": "A", "text": "a"}\n\n{"title": "B", "text": "b"\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(lines))}:3: not a JSON line"):
        read_passages(str(lines))
    whole = tmp_path / "p.json"
    for data, said in [({"passages": 7}, "field 'passages': expected a list of passages"),
                       ([{"title": "A"}], "passage 1: a passage needs a 'text' field"),
                       ([{"title": "A", "text": "a"}, {"title": 3, "text": "b"}], "passage 2: field 'title' must be a string"),
                       ([5], "passage 1: a passage is a")]:
        whole.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=re.escape(f"{whole}: {said}")):
            read_passages(str(whole))
    whole.write_text('[{"title": "A",\n "text": }]')
    with pytest.raises(ValueError, match=rf"{re.escape(str(whole))}:2: not JSON"):
        read_passages(str(whole))
    lines.write_text('{"title": "A", "text": "a"}\n\n"b"\n')
    assert read_passages(str(lines)) == [Passage("A", "a"), Passage(text="b")]


def test_ask_reads_its_passages_before_loading_the_model(tmp_path, monkeypatch, capsys):
    from openrag.answer import OpenRAG

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda cls, *a, **k: never_loaded(None, None)))
    passages = tmp_path / "p.json"
    passages.write_text('{"passages": 7}')
    code, err = run_cli(["ask", "Who?", "--passages", str(passages)], capsys)
    assert code == 2 and f"{passages}: field 'passages': expected a list" in err


def test_index_output_under_a_file_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "1", "title": "A", "text": "a"}) + "\n")
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(["index", "--corpus", str(corpus), "--output", str(tmp_path / "afile" / "sub")], capsys)
    assert code == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in err


@pytest.mark.parametrize("suffix", ["/", ""])
def test_data_build_output_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys, suffix):
    import openrag.data.build as build

    monkeypatch.setattr(build, "build", lambda *a, **k: never_loaded(None, None))
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    code, err = run_cli(["data", "build", str(data), "--output", str(out) + suffix, "--tokenizer", "none"], capsys)
    assert code == 2 and f"--output {out}{suffix} is a folder; give a file name in it" in err


def test_info_on_a_folder_without_weights(tmp_path, capsys):
    from .conftest import tiny_llama_config

    tiny_llama_config().save_pretrained(tmp_path / "ckpt")
    code, err = run_cli(["info", str(tmp_path / "ckpt")], capsys)
    assert code == 2 and "has a config.json but no weights" in err


def test_the_cli_reports_every_error_as_one_line(monkeypatch, capsys):
    import openrag.commands.info as info

    def fails_with(err):
        def run(args):
            raise err
        return run

    monkeypatch.setattr(info, "run", fails_with(IsADirectoryError(21, "Is a directory", "/some/dir")))
    assert run_cli(["info"], capsys) == (2, "openrag info: error: /some/dir: Is a directory\n")
    monkeypatch.setattr(info, "run", fails_with(TypeError("unsupported operand")))
    code, err = run_cli(["info"], capsys)
    assert code == 1 and err.startswith("openrag info: internal error: TypeError: unsupported operand") and err.count("\n") == 1
    monkeypatch.setenv("OPENRAG_TRACEBACK", "1")
    with pytest.raises(TypeError):
        main(["info"])


# ------------------------------------------------------------------------- ask: passages files and choices


def test_ask_passages_suffix_is_read_in_any_case(tmp_path):
    from openrag.data.passage_files import read_passages

    for name in ("p.JSON", "p.Json"):
        (tmp_path / name).write_text(json.dumps([{"title": "A", "text": "a"}, "b"]))
        assert read_passages(str(tmp_path / name)) == [Passage("A", "a"), Passage(text="b")]
    (tmp_path / "p.JSONL").write_text('{"title": "A", "text": "a"}\n"b"\n')
    assert read_passages(str(tmp_path / "p.JSONL")) == [Passage("A", "a"), Passage(text="b")]


@pytest.mark.parametrize("name, content", [("p.txt", ""), ("p.txt", "\n\n  \n"), ("p.json", "[]"),
                                           ("p.json", '{"passages": []}'), ("p.jsonl", "\n")])
def test_ask_passages_file_without_a_passage_is_an_error(tmp_path, monkeypatch, capsys, name, content):
    from openrag.answer import OpenRAG

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda cls, *a, **k: never_loaded(None, None)))
    passages = tmp_path / name
    passages.write_text(content)
    code, err = run_cli(["ask", "Who?", "--passages", str(passages)], capsys)
    assert code == 2 and f"{passages}: no passage in it (an empty file or list); give at least one passage" in err


@pytest.mark.parametrize("flags, said", [
    (["--choices", "a", "b"], "--choices: task multihop takes no answer choices; drop choices, or ask with a "
                              "multiple-choice task (arc_c)"),
    (["--task", "popqa", "--choices", "a", "b"], "--choices: task popqa takes no answer choices"),
    (["--task", "arc_c"], "--choices: task arc_c needs the answer choices"),
    (["--task", "arc_c", "--choices", *"abcdef"], "--choices: at most 5 answer choices (A-E), got 6; "
                                                  "drop the extra ones"),
])
def test_ask_choices_must_suit_the_task_before_the_model_loads(monkeypatch, capsys, flags, said):
    from openrag.answer import OpenRAG

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda cls, *a, **k: never_loaded(None, None)))
    code, err = run_cli(["ask", "Which?", *flags], capsys)
    assert code == 2 and said in err


class PromptingRAG:
    """Builds each question's real prompt (openrag.answer.prompts) and answers 'C'; records the prompts."""

    prompts: list[str] = []

    def answer_batch(self, questions, passages=None, choices=None, **options):
        from openrag.answer import Answer
        from openrag.answer.prompts import question_prompt

        choices = choices or [None] * len(questions)
        PromptingRAG.prompts = [question_prompt(options["task"], q, c) for q, c in zip(questions, choices)]
        return [Answer(question=q, text="C", retrieved=False, mode=options["mode"]) for q in questions]


ARC = str(Path(__file__).parent / "data_fixtures" / "arc_ctxs.jsonl")  # one ARC row: 4 choices and its passages


def test_ask_questions_passes_each_rows_choices(monkeypatch, capsys):
    from openrag.answer import OpenRAG

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda cls, *a, **k: PromptingRAG()))
    with pytest.raises(SystemExit) as done:
        main(["ask", "--questions", ARC, "--task", "arc_c", "--json"])
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)[0]["gold"] == ["C", "carbon dioxide"]
    (prompt,) = PromptingRAG.prompts
    assert "\nA: oxygen\nB: nitrogen\nC: carbon dioxide\nD: helium\n" in prompt


@pytest.mark.parametrize("flags, said", [
    ([], f"{ARC}:1: task multihop takes no answer choices"),  # the file's choices would be left out of the prompt
    (["--task", "arc_c", "--choices", "a", "b"], "--questions answers each question with its own choices (the "
                                                 "file's): drop --choices"),
])
def test_ask_questions_refuses_choices_it_would_drop(monkeypatch, capsys, flags, said):
    from openrag.answer import OpenRAG

    monkeypatch.setattr(OpenRAG, "from_pretrained", classmethod(lambda cls, *a, **k: never_loaded(None, None)))
    code, err = run_cli(["ask", "--questions", ARC, *flags], capsys)
    assert code == 2 and said in err


# ------------------------------------------------------------------------- eval: shard variables


@pytest.mark.parametrize("name, flag", [("WORLD_SIZE", "--world_size"), ("RANK", "--rank")])
def test_eval_shard_variable_that_is_not_a_number_is_one_line(monkeypatch, capsys, name, flag):
    monkeypatch.setenv(name, "two")
    code, err = run_cli(["eval", "--task", "hotpotqa", "--dataset", "nowhere.jsonl"], capsys)
    assert code == 2 and f"environment variable {name} must be a whole number (the default of {flag}), got 'two'" in err


def test_eval_shard_variables_are_the_flags_defaults(monkeypatch):
    from openrag.cli import build_parser
    from openrag.commands.eval import _request

    def request(*flags):
        return _request(build_parser(with_flags=["eval"]).parse_args(["eval", "--task", "hotpotqa", *flags]))

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert (request().world_size, request().rank) == (4, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")  # the flags given: the variables are not read
    monkeypatch.setenv("RANK", "one")
    req = request("--world_size", "2", "--rank", "1")
    assert (req.world_size, req.rank) == (2, 1)


# ----------------------------------------------------- issue 31, item 4: a mistyped local checkpoint is local


@pytest.fixture
def hub_downloads(monkeypatch, tmp_path):
    """In a folder that holds ``tr/``: the names sent to the hub's snapshot_download (none should be)."""
    import huggingface_hub

    calls = []

    def fake_download(name, **kwargs):
        calls.append(name)
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tr").mkdir()
    return calls


@pytest.mark.parametrize("name", ["tr/nope_model", "./nope", "~/no/such/model"])
def test_a_missing_local_checkpoint_is_an_error_not_a_hub_request(hub_downloads, name):
    from openrag.model.loading import resolve_folder

    with pytest.raises(FileNotFoundError, match=f"no checkpoint folder at {re.escape(name)}: .*never looked up on the hub"):
        resolve_folder(name)
    assert hub_downloads == []
    with pytest.raises(FileNotFoundError, match="cannot fetch 'owner/model' from the Hugging Face hub"):
        resolve_folder("owner/model")  # a hub name still goes to the hub
    assert hub_downloads == ["owner/model"]


@pytest.mark.parametrize("argv", [["ask", "Who?", "--model_name", "tr/nope_model"],
                                  ["eval", "--task", "hotpotqa", "--dataset", "dev.jsonl", "--model_name", "tr/nope_model",
                                   "--output_file", "out.jsonl", "--no_progress"],
                                  ["merge", "--base_model", "tr/nope_base", "--model_path", "BUNDLED", "--output_dir", "merged"],
                                  ["info", "tr/nope_model"]])
def test_every_command_refuses_a_missing_local_checkpoint(hub_downloads, capsys, argv):
    from openrag.model.bundled import default_model_dir

    Path("dev.jsonl").write_text(json.dumps(ROW) + "\n")
    argv = [str(default_model_dir()) if a == "BUNDLED" else a for a in argv]  # an adapter checkpoint to merge
    code, err = run_cli(argv, capsys)
    assert code == 2 and "no checkpoint folder at tr/nope_" in err and "never looked up on the hub" in err, err
    assert hub_downloads == []


def test_train_refuses_a_missing_init_from_before_loading_the_base(hub_downloads, monkeypatch, capsys):
    import openrag.training.run as training_run

    monkeypatch.setattr(training_run, "build_model", lambda *a, **k: never_loaded(None, None))
    Path("train.jsonl").write_text("")
    code, err = run_cli(["train", "--init_from", "tr/nope", "--data_path", "train.jsonl", "--output_dir", "ckpt"], capsys)
    assert code == 2 and "no checkpoint folder at tr/nope: " in err and "never looked up on the hub" in err, err
    assert hub_downloads == []


def test_encoders_and_rerankers_follow_the_same_rule(hub_downloads):
    from openrag.retrieval.dense import DenseSettings, load_encoder
    from openrag.retrieval.rerank import CrossEncoderReranker

    with pytest.raises(FileNotFoundError, match="no sentence-transformers encoder .* at tr/nope: .*never looked up"):
        load_encoder(DenseSettings(model="tr/nope"))
    with pytest.raises(FileNotFoundError, match="no cross-encoder .* at tr/nope: .*never looked up"):
        CrossEncoderReranker("tr/nope")
