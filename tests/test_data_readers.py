"""Readers: every format of ../shared/data read as it is, with bad rows reported by file, line and field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from openrag.data import ErrorLog, RowError, load_training_instances, read_examples
from openrag.passage import Passage
from openrag.data.examples import SubQuestion
from openrag.data.facts import fact_question

FIXTURES = Path(__file__).parent / "data_fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def read(name: str, **kwargs):
    errors = ErrorLog()
    return list(read_examples(FIXTURES / name, errors=errors, **kwargs)), errors


def test_hotpotqa_original_json_list():
    (h1, h2), errors = read("hotpotqa_original.json")
    assert errors.count == 0
    assert (h1.id, h1.dataset, h1.answers, h1.ranked) == ("h1", "hotpotqa", ["Lyon"], False)
    assert h1.source == f"{FIXTURES / 'hotpotqa_original.json'}:2"  # the line its object starts on
    assert h1.passages[0] == Passage("Blue Fox", "Blue Fox is a novel by Anna Marek. It was published in 1990.", is_gold=True)
    assert [p.title for p in h1.passages if p.is_gold] == ["Blue Fox", "Anna Marek"]
    # reasoning order from supporting_facts, not list order
    assert [p.title for p in h2.gold_passages] == ["Blue Fox", "Green Owl"]


def test_2wiki_sentences_joined_and_missing_context_reported():
    (w1,), errors = read("2wiki.jsonl")
    assert w1.dataset == "2wikimultihopqa"
    assert w1.passages[0].text == "Tom Kay is a film director. His father is Bo Kay."
    assert w1.supporting_titles == ["Grey Sky", "Tom Kay"]
    (err,) = errors.errors
    assert (err.line, err.field) == (2, "context") and err.file.endswith("2wiki.jsonl")


def test_2wiki_evidence_triples_become_facts():
    """Passages: Tom Kay 0, Grey Sky 1, Grey Sea 2. (Grey Sea, director, Tom Kay) is left out: Grey Sea's
    passage does not hold Tom Kay; (Bo Kay, occupation, actor) too: no passage is titled Bo Kay."""
    (w1,), _ = read("2wiki.jsonl")
    assert w1.sub_questions == [
        SubQuestion("Who directed Grey Sky?", "Tom Kay", 1),
        SubQuestion("Who was the father of Tom Kay?", "Bo Kay", 0),
    ]


def test_2wiki_evidences_as_a_string_and_malformed(tmp_path):
    row = json.loads((FIXTURES / "2wiki.jsonl").read_text().splitlines()[0])
    rows = [
        {**row, "_id": "s", "evidences": "[['Tom Kay', 'father', 'Bo Kay']]"},
        {**row, "_id": "bad", "evidences": [["Tom Kay", "father"]]},
        {**row, "_id": "none", "evidences": "[]"},
    ]
    (tmp_path / "2wiki_x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (s, bad, none), errors = read(tmp_path / "2wiki_x.jsonl")
    assert s.sub_questions == [SubQuestion("Who was the father of Tom Kay?", "Bo Kay", 0)] and none.sub_questions == []
    # a malformed optional field costs the row its facts, never the row itself
    assert bad.id == "bad" and bad.sub_questions == [] and len(bad.passages) == len(s.passages) and errors.count == 0


def test_fact_question_wording():
    assert fact_question("Grey Sky", "director") == "Who directed Grey Sky?"
    assert fact_question("Ann Lee", "Date_of  Birth") == "When was Ann Lee born?"  # underscores, case, spaces
    assert fact_question("Zed", "mouth of the watercourse") == "What is the mouth of the watercourse of Zed?"


def test_rows_without_paragraphs_are_read_when_a_retriever_supplies_them(tmp_path):
    (w1, w2), errors = read("2wiki.jsonl", passages_required=False)
    assert errors.count == 0 and len(w1.passages) == 3
    assert (w2.id, w2.passages, w2.supporting_titles, w2.answers) == ("w2", [], ["Grey Sky", "Grey Sea"], ["Grey Sky"])
    # a first row without paragraphs still names its format by its other fields
    first, second = (FIXTURES / "2wiki.jsonl").read_text().splitlines()[::-1]
    (tmp_path / "2wiki_swapped.jsonl").write_text(first + "\n" + second + "\n")
    (w1,), errors = read(tmp_path / "2wiki_swapped.jsonl")
    assert w1.supporting_titles == ["Grey Sky", "Tom Kay"] and [(e.line, e.field) for e in errors.errors] == [(1, "context")]


def test_musique_aliases_decomposition_order_and_unanswerable():
    (m1,), errors = read("musique.jsonl")
    assert m1.answers == ["Oslo", "Christiania"]
    assert m1.supporting_titles == ["Zed River", "Norway"]
    assert [p.title for p in m1.gold_passages] == ["Zed River", "Norway"]
    assert [(e.line, e.field) for e in errors.errors] == [(2, "answerable")]
    # hop 1 "Zed River >> country" worded as a question; hop 2 "capital of #1" with hop 1's answer
    assert m1.sub_questions == [SubQuestion("Which country is Zed River in?", "Norway", 2), SubQuestion("capital of Norway", "Oslo", 0)]


def test_musique_hops_substitute_earlier_answers_and_skip_unheld_ones(tmp_path):
    paragraphs = [  # idx is not the list position
        {"idx": 5, "title": "Moon Film", "paragraph_text": "Moon Film was directed by Ann Lee.", "is_supporting": True},
        {"idx": 3, "title": "Ann Lee", "paragraph_text": "Ann Lee is a director.", "is_supporting": True},
        {"idx": 7, "title": "Lyon", "paragraph_text": "Lyon is a city in France, south of Paris.", "is_supporting": True},
    ]
    hops = [
        {"id": 1, "question": "Moon Film >> director", "answer": "Ann Lee", "paragraph_support_idx": 5},
        {"id": 2, "question": "Where was #1 born?", "answer": "Lyon", "paragraph_support_idx": 3},  # not in its passage
        {"id": 3, "question": "#2 >> country", "answer": "France", "paragraph_support_idx": 7},  # #2 still stands for Lyon
        {"id": 4, "question": "What is the capital of #5?", "answer": "Paris", "paragraph_support_idx": 7},  # names no earlier hop
        {"id": 5, "question": "Which river flows through #3?", "answer": "Paris", "paragraph_support_idx": 9},  # no such paragraph
    ]
    row = {"id": "3hop__x", "question": "In which country was the director of Moon Film born?", "answer": "France",
           "answer_aliases": [], "answerable": True, "paragraphs": paragraphs, "question_decomposition": hops}
    (tmp_path / "musique_x.jsonl").write_text(json.dumps(row) + "\n")
    (m,), errors = read(tmp_path / "musique_x.jsonl")
    assert errors.count == 0
    assert m.sub_questions == [SubQuestion("Who directed Moon Film?", "Ann Lee", 0), SubQuestion("Which country is Lyon in?", "France", 2)]


def test_musique_hop_points_at_its_paragraph_when_idx_repeats(tmp_path):
    paragraphs = [
        {"idx": 2, "title": "Moon Film", "paragraph_text": "Moon Film was directed by Ann Lee.", "is_supporting": True},
        {"idx": 2, "title": "Sun Film", "paragraph_text": "Sun Film was directed by Bo Kay.", "is_supporting": False},
        {"idx": 4, "title": "Ann Lee", "paragraph_text": "Ann Lee was born in Lyon.", "is_supporting": True},
    ]
    hops = [{"id": 1, "question": "Moon Film >> director", "answer": "Ann Lee", "paragraph_support_idx": 2},
            {"id": 2, "question": "Where was #1 born?", "answer": "Lyon", "paragraph_support_idx": 4}]
    row = {"id": "2hop__y", "question": "Where was the director of Moon Film born?", "answer": "Lyon",
           "answer_aliases": [], "answerable": True, "paragraphs": paragraphs, "question_decomposition": hops}
    (tmp_path / "musique_y.jsonl").write_text(json.dumps(row) + "\n")
    (m,), _ = read(tmp_path / "musique_y.jsonl")
    assert m.sub_questions == [SubQuestion("Who directed Moon Film?", "Ann Lee", 0), SubQuestion("Where was Ann Lee born?", "Lyon", 2)]


def test_ircot_malformed_line_empty_answer_and_no_gold():
    (i1,), errors = read("ircot.jsonl")
    assert (i1.id, i1.question, i1.answers, i1.dataset) == ("i1", "Who directed Moon Film?", ["Ann Lee"], "hotpotqa")
    assert [(e.line, e.field) for e in errors.errors] == [(2, "json"), (3, "answers_objects"), (4, "contexts.is_supporting")]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_lone_answer_string_is_one_answer_not_its_letters(tmp_path):
    ircot = json.loads((FIXTURES / "ircot.jsonl").read_text().splitlines()[0])
    musique = json.loads((FIXTURES / "musique.jsonl").read_text().splitlines()[0])
    (i,), _ = read(write_rows(tmp_path / "ircot_s.jsonl", [{**ircot, "answers_objects": [{"spans": "Ann Lee"}]}]))
    (m,), _ = read(write_rows(tmp_path / "musique_s.jsonl", [{**musique, "answer_aliases": "Christiania"}]))
    assert i.answers == ["Ann Lee"] and m.answers == ["Oslo", "Christiania"]


def test_answer_lists_of_another_type_name_their_field(tmp_path):
    ircot = json.loads((FIXTURES / "ircot.jsonl").read_text().splitlines()[0])
    musique = json.loads((FIXTURES / "musique.jsonl").read_text().splitlines()[0])
    _, errors = read(write_rows(tmp_path / "ircot_n.jsonl", [{**ircot, "answers_objects": [{"spans": {"a": 1}}]}]))
    assert [(e.line, e.field) for e in errors.errors] == [(1, "answers_objects.spans")]
    assert "expected a list (or a single string), got dict" in errors.errors[0].message
    _, errors = read(write_rows(tmp_path / "musique_n.jsonl", [{**musique, "answer_aliases": 7}, {**musique, "question_decomposition": 3}]))
    assert [(e.line, e.field) for e in errors.errors] == [(1, "answer_aliases"), (2, "question_decomposition")]
    assert "got int 7" in errors.errors[0].message


def test_gold_flags_are_booleans_or_0_1(tmp_path):
    musique = json.loads((FIXTURES / "musique.jsonl").read_text().splitlines()[0])
    ircot = json.loads((FIXTURES / "ircot.jsonl").read_text().splitlines()[0])
    ctx = lambda flag: {"question": "Who sings?", "answers": ["singer"], "ctxs": [{"title": "T", "text": "a singer", "hasanswer": flag}]}  # noqa: E731
    rows, errors = read(write_rows(tmp_path / "popqa_f.jsonl", [ctx(True), ctx(0), ctx(1.0), ctx(None), ctx("false"), ctx(2)]))
    assert [ex.passages[0].is_gold for ex in rows] == [True, False, True, None]
    assert [(e.line, e.field) for e in errors.errors] == [(5, "ctxs.hasanswer"), (6, "ctxs.hasanswer")]
    assert "got 'false'; write the flag as a JSON boolean" in errors.errors[0].message
    bad_paragraphs = [{**p, "is_supporting": "no"} for p in musique["paragraphs"]]
    bad_contexts = [{**c, "is_supporting": "yes"} for c in ircot["contexts"]]
    _, errors = read(write_rows(tmp_path / "musique_f.jsonl", [{**musique, "paragraphs": bad_paragraphs}]))
    assert [e.field for e in errors.errors] == ["paragraphs.is_supporting"]
    _, errors = read(write_rows(tmp_path / "ircot_f.jsonl", [{**ircot, "contexts": bad_contexts}]))
    assert [e.field for e in errors.errors] == ["contexts.is_supporting"]


def test_choice_labels_must_match_the_texts(tmp_path):
    arc = json.loads((FIXTURES / "arc_ctxs.jsonl").read_text().splitlines()[0])
    rows = [{**arc, "choices": {"text": ["x", "y"], "label": ["A", "B", "C"]}, "answerKey": "C"},
            {**arc, "choices": {"text": ["x", "y", "z"], "label": ["A", "B"]}, "answerKey": "A"},
            {**arc, "choices": {"text": ["x", "y"], "label": "AB"}, "answerKey": "A"}]
    _, errors = read(write_rows(tmp_path / "arc_l.jsonl", rows))
    assert [(e.line, e.field) for e in errors.errors] == [(1, "choices"), (2, "choices"), (3, "choices")]
    assert errors.errors[0].message.startswith("3 labels for 2 texts; give one label per choice text")
    assert errors.errors[1].message.startswith("2 labels for 3 texts")


def test_selfrag_ctxs_ranked_scores_and_empty_passages_dropped():
    (p1, p2), errors = read("popqa_ctxs.jsonl")
    assert (p1.id, p1.dataset, p1.ranked, p1.answers) == ("7", "popqa", True, ["singer", "vocalist"])
    assert [p.title for p in p1.passages] == ["Bly", "Jo Bly", "Jo", "Ohio"]  # the empty category page is gone
    assert p1.passages[0].score == 1.5 and p1.passages[0].is_gold is None
    assert [(e.line, e.field, e.message) for e in errors.errors] == [(3, "answers", "empty answer")]


def test_arc_choices_lettered():
    (a,), _ = read("arc_ctxs.jsonl")
    assert a.dataset == "arc_c"
    assert a.choices == ["oxygen", "nitrogen", "carbon dioxide", "helium"]
    assert (a.answer_key, a.answers) == ("C", ["C", "carbon dioxide"])


def test_openrag_bench_answer_and_top_contexts():
    (b,), _ = read("bench_hotpotqa.jsonl")
    assert (b.id, b.dataset, b.answers, b.ranked) == ("hotpotqa-1", "hotpotqa", ["Tokyo"], True)
    assert b.passages == [Passage("", "Kyoto was the old capital."), Passage("Tokyo", "Tokyo is the capital of Japan.")]


def test_gold_evidence_rows_are_untitled_gold_passages():
    rows, errors = read("gold_evidence.jsonl")
    assert errors.count == 0 and len(rows) == 4
    a, b = rows[0], rows[1]
    question = "Which city is the birthplace of the author of Blue Fox?"
    assert (a.id, a.question, a.answers, a.dataset, a.ranked) == ("q-" + hashlib.sha1(question.encode()).hexdigest()[:12], question, ["Lyon"], "hotpotqa", False)
    assert a.passages == [
        Passage("", "Blue Fox is a novel by Anna Marek.", is_gold=True),
        Passage("", "Anna Marek is a writer born in Lyon, France.", is_gold=True),
    ]
    assert b.id == "g2" and a.sub_questions == [] and a.supporting_titles is None
    assert [p.title for p in a.gold_passages] == ["", ""]


def test_gold_evidence_bad_rows(tmp_path):
    rows = [
        {"question": "Q one?", "answer": "A", "evidence": []},
        {"question": "Q two?", "answer": "A", "evidence": ["A is here.", "  "]},
        {"question": "Q three?", "evidence": ["A is here."]},
        {"question": "Q four?", "answer": "A", "evidence": ["A is here."]},
    ]
    (tmp_path / "gold_x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ok,), errors = read(tmp_path / "gold_x.jsonl")
    assert ok.question == "Q four?" and ok.passages == [Passage("", "A is here.", is_gold=True)]
    assert [(e.line, e.field) for e in errors.errors] == [(1, "evidence"), (2, "evidence"), (3, "answer")]


def test_task_names_the_dataset():
    (b,), _ = read("bench_hotpotqa.jsonl", task="musique")
    assert b.dataset == "musique"


def test_strict_stops_at_first_bad_row():
    with pytest.raises(RowError) as info:
        list(read_examples(FIXTURES / "ircot.jsonl", strict=True))
    assert (info.value.line, info.value.field) == (2, "json")
    assert "ircot.jsonl:2" in str(info.value)


def test_row_windows_are_complements(tmp_path):
    path = FIXTURES / "hotpotqa_original.json"
    assert [e.id for e in read_examples(f"{path}:limit=1")] == ["h1"]
    assert [e.id for e in read_examples(f"{path}:skip=1")] == ["h2"]
    assert [e.id for e in read_examples(path, skip=1, limit=5)] == ["h2"]


def test_training_data_is_refused_by_the_qa_reader():
    with pytest.raises(ValueError, match="load_training_instances"):
        list(read_examples(FIXTURES / "released_train.jsonl"))


def test_truncated_json_list_reports_and_stops(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"_id": "a", "question": "q?", "answer": "x", "supporting_facts": [["T", 0]], "context": [["T", ["x y"]]]},\n{"_id": "b", "quest')
    errors = ErrorLog()
    assert [e.id for e in read_examples(path, errors=errors)] == ["a"]
    assert errors.errors[0].field == "json" and errors.errors[0].line == 3


def test_released_training_schema():
    errors = ErrorLog()
    rows = load_training_instances(FIXTURES / "released_train.jsonl", errors=errors)
    assert rows == [
        {"input": "Who wrote Hamlet?", "output": "[Retrieval]<paragraph>Hamlet is a play by Shakespeare.</paragraph>[Relevant]Shakespeare[Fully supported][Utility:5]"},
        {"input": "Name a colour.", "output": "[No Retrieval]Blue[Utility:4]"},
    ]  # the corpus row and the multi-turn row are left out, as the released loader does
    assert [(e.line, e.field) for e in errors.errors] == [(4, "conversation[0].input/output")]


def test_train_decision_false_survives_loading(tmp_path):
    turn = {"input": "Q?", "output": "[Retrieval]<paragraph>P</paragraph>[Irrelevant]"}
    rows = [
        {"instruction": "", "conversation": [turn], "corpus": "", "id": "a", "train_decision": False},
        {"instruction": "", "conversation": [turn], "corpus": "", "id": "b"},
        {"instruction": "", "conversation": [turn], "corpus": "", "id": "c", "train_decision": True},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_training_instances(tmp_path / "train.jsonl") == [{**turn, "train_decision": False}, turn, turn]


def test_missing_file_says_so():
    with pytest.raises(FileNotFoundError, match="no data file"):
        list(read_examples("no/such/dir/file.jsonl"))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")
@pytest.mark.parametrize(
    "name, n, dataset",
    [
        ("hotpotqa/hotpotqa_dev_ircot500.jsonl", 500, "hotpotqa"),
        ("hotpotqa/hotpotqa_train100.json", 100, "hotpotqa"),
        ("musique/musique_dev200.jsonl", 200, "musique"),
        ("musique/musique_train100.json", 100, "musique"),
        ("2wikimultihopqa/2wiki_dev200.jsonl", 164, "2wikimultihopqa"),  # 36 rows there have no context
        ("popqa/popqa_longtail100_ctxs.jsonl", 100, "popqa"),
        ("arc_challenge/arc_challenge100_ctxs.jsonl", 100, "arc_c"),
    ],
)
def test_shared_data(name, n, dataset):
    errors = ErrorLog()
    examples = list(read_examples(SHARED / name, errors=errors))
    assert len(examples) == n and {e.dataset for e in examples} == {dataset}
    assert all(e.question and e.answers and e.answers[0] for e in examples)
    assert errors.count == {"2wikimultihopqa": 36}.get(dataset, 0)


def test_hub_names_load_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "shayekh/openrag_bench":
            return {"train": [], "dev": [{"question": "Q one?", "answers": ["A"], "ctxs": [{"title": "T", "text": "A is here."}]}]}
        return [{"instruction": "", "conversation": [{"input": "Q", "output": "[No Retrieval]A[Utility:5]"}], "corpus": ""}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (ex,) = read_examples("shayekh/openrag_bench", task="hotpotqa")
    assert (ex.dataset, ex.id, ex.source, ex.ranked) == ("hotpotqa", "hotpotqa-1", "shayekh/openrag_bench[hotpotqa]:1", True)
    assert load_training_instances("shayekh/openrag_train_data", "moe") == [{"input": "Q", "output": "[No Retrieval]A[Utility:5]"}]
    assert calls == [("shayekh/openrag_bench", "hotpotqa", None), ("shayekh/openrag_train_data", "moe", "train")]


CITEPROBE = SHARED / "hotpotqa/hotpotqa_train500_citeprobe.json"


@pytest.mark.skipif(not CITEPROBE.is_file(), reason="../shared/data is not here")
def test_sources_rows_of_hotpotqa_distractor_train():
    """Real rows: values written from the file's first row by hand (its line 12 opens the row)."""
    errors = ErrorLog()
    rows = list(read_examples(CITEPROBE, errors=errors))
    assert errors.count == 0 and len(rows) == 500
    first = rows[0]
    assert (first.id, first.dataset, first.answers, first.ranked) == ("45069", "hotpotqa", ["Jim Obergefell"], False)
    assert first.source == f"{CITEPROBE}:12"
    assert first.question.startswith("Who was the widow affected by the Same-sex marriage decision")
    assert len(first.passages) == 10 and [p.is_gold for p in first.passages].count(True) == 2
    assert first.passages[0].title == "Bourke v. Beshear" and first.passages[0].is_gold is False
    assert first.passages[0].text.startswith("The lead cases on same-sex marriage in Kentucky are Bourke v. Beshear, and its "
                                             "companion case Love v. Beshear. In \"Bourke\", a U.S. district court")
    assert [p.title for p in first.gold_passages] == ["Same-sex marriage in Ohio", "Same-sex marriage in the Sixth Circuit"]
    assert sorted(len(r.passages) for r in rows)[:4] == [3, 4, 5, 10]  # three rows hold fewer paragraphs
    assert all(sum(p.is_gold for p in r.passages) == 2 for r in rows)


def _sources_row(**changes) -> dict:
    row = {
        "dataset_index": 7, "question": "Who wrote Blue Fox?", "answer": "Anna Marek",
        "gold_source_indices": [[1, 0], [0, 1]],
        "sources": [
            {"title": "Blue Fox", "text": ["Blue Fox is a novel.", " It was written by Anna Marek."], "is_gold": True, "gold_sentence_indices": [1]},
            {"title": "Novels", "text": ["A novel is a long story."], "is_gold": True, "gold_sentence_indices": [0]},
            {"title": "Red Fox", "text": ["The red fox is an animal."], "is_gold": False, "gold_sentence_indices": []},
        ],
    }
    return {**row, **changes}


def test_sources_object_file_lines_order_and_bad_rows(tmp_path):
    sources = _sources_row()["sources"]
    rows = [
        _sources_row(),
        _sources_row(question="Q two?", gold_source_indices=[[2, 0]]),  # flags and pairs disagree
        _sources_row(question="Q three?", gold_source_indices=[[0, 5]]),  # no sentence 5
        _sources_row(question="Q four?", sources=[{**s, "is_gold": False} for s in sources], gold_source_indices=[]),
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"split": "train", "seed": 1, "examples": rows}, indent=1))
    errors = ErrorLog()
    (ok,) = read_examples(path, errors=errors)
    assert ok.id == "7" and ok.passages[0] == Passage("Blue Fox", "Blue Fox is a novel. It was written by Anna Marek.", is_gold=True)
    assert [p.title for p in ok.gold_passages] == ["Novels", "Blue Fox"]  # the pairs' order, not the list's
    text = path.read_text().splitlines()
    starts = [i + 1 for i, line in enumerate(text) if line.startswith("  {")]  # where each row object opens
    assert ok.source == f"{path}:{starts[0]}"
    assert [(e.line, e.field) for e in errors.errors] == [
        (starts[1], "gold_source_indices"), (starts[2], "gold_source_indices"), (starts[3], "sources.is_gold")]
    assert "flagged is_gold" in errors.errors[0].message and "2 sentences" in errors.errors[1].message
