"""Building instances: expected outputs written by hand per format, exclusion, determinism, the command."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from openrag.data import ErrorLog, RowError, normalize_question, read_examples
from openrag.data.build import BuildConfig, Exclusion, Instance, build, build_report, instances_for
from openrag.model.reflection import GROUNDEDNESS_TOKENS, REFLECTION_TOKENS

FIXTURES = Path(__file__).parent / "data_fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def made(name: str, index: int = 0, **config) -> list[Instance]:
    ex = list(read_examples(FIXTURES / name, errors=ErrorLog()))[index]
    return instances_for(ex, BuildConfig(**config))


def pairs(name: str, index: int = 0, **config) -> list[tuple[str, str]]:
    return [(i.kind, i.output) for i in made(name, index, **config)]


# Expected outputs below are written by hand from the rules in build.py and labels.py: distractors end at
# [Irrelevant] and are as many as the question's single gold instances (fewer when the row has fewer
# candidates); only closed-class questions get [No Retrieval]; facts follow the question's own instances.


def test_hotpotqa_bridge():
    chain = (
        "Knowledge 1: Blue Fox\nBlue Fox is a novel by Anna Marek. It was published in 1990. \n[SEP] \n"
        "Knowledge 2: Anna Marek\nAnna Marek is a writer. She was born in Lyon."
    )
    assert pairs("hotpotqa_original.json", 0) == [
        ("gold_chain", f"[Retrieval]<paragraph>{chain}</paragraph>[Relevant]Lyon[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Blue Fox\nBlue Fox is a novel by Anna Marek. It was published in 1990.</paragraph>[Relevant]Lyon[No support / Contradictory][Utility:3]"),
        ("gold", "[Retrieval]<paragraph>Anna Marek\nAnna Marek is a writer. She was born in Lyon.</paragraph>[Relevant]Lyon[Partially supported][Utility:4]"),
        # two gold instances, two distractors; closest non-gold first (shares "fox" with the question and a
        # gold title); "Lyon Station" holds the answer: never a distractor. Not closed-class: no [No Retrieval].
        ("distractor", "[Retrieval]<paragraph>Red Fox\nThe red fox is a mammal found in many countries.</paragraph>[Irrelevant]"),
        ("distractor", "[Retrieval]<paragraph>Paris\nParis is the capital city of France.</paragraph>[Irrelevant]"),
    ]
    # the question's one [Retrieval] target is its first instance; the rest only carry evidence
    assert [i.train_decision for i in made("hotpotqa_original.json", 0)] == [True, False, False, False, False]
    assert ["train_decision" in i.to_row() for i in made("hotpotqa_original.json", 0)] == [False, True, True, True, True]


def test_hotpotqa_yes_no_comparison():
    chain = "Knowledge 1: Blue Fox\nBlue Fox is a novel by Anna Marek. \n[SEP] \nKnowledge 2: Green Owl\nGreen Owl is a novel."
    assert pairs("hotpotqa_original.json", 1) == [
        ("gold_chain", f"[Retrieval]<paragraph>{chain}</paragraph>[Relevant]yes[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Blue Fox\nBlue Fox is a novel by Anna Marek.</paragraph>[Relevant]yes[Partially supported][Utility:4]"),
        ("gold", "[Retrieval]<paragraph>Green Owl\nGreen Owl is a novel.</paragraph>[Relevant]yes[Partially supported][Utility:4]"),
        # two gold instances but only one non-gold passage in the row
        ("distractor", "[Retrieval]<paragraph>Owl\nOwls are birds.</paragraph>[Irrelevant]"),
        ("no_retrieval", "[No Retrieval]yes[Utility:2]"),
    ]


def test_closed_class_question_trains_its_decision_once():
    """Yes/no: the evidence instances do not train their leading [Retrieval]; the [No Retrieval] one does."""
    made_ = made("hotpotqa_original.json", 1)
    assert [(i.kind, i.train_decision) for i in made_] == [
        ("gold_chain", False), ("gold", False), ("gold", False), ("distractor", False), ("no_retrieval", True),
    ]
    rows = [i.to_row() for i in made_]
    assert [r.get("train_decision", "absent") for r in rows] == [False, False, False, False, "absent"]
    arc = made("arc_ctxs.jsonl")
    assert [(i.kind, i.train_decision) for i in arc] == [("gold", False), ("distractor", False), ("no_retrieval", True)]


def test_distractor_answers_restores_answer_and_utility():
    assert pairs("hotpotqa_original.json", 0, distractor_answers=True)[3:] == [
        ("distractor", "[Retrieval]<paragraph>Red Fox\nThe red fox is a mammal found in many countries.</paragraph>[Irrelevant]Lyon[Utility:1]"),
        ("distractor", "[Retrieval]<paragraph>Paris\nParis is the capital city of France.</paragraph>[Irrelevant]Lyon[Utility:1]"),
    ]
    assert pairs("hotpotqa_original.json", 1, distractor_answers=True)[3:] == [
        ("distractor", "[Retrieval]<paragraph>Owl\nOwls are birds.</paragraph>[Irrelevant]yes[Utility:2]"),
        ("no_retrieval", "[No Retrieval]yes[Utility:2]"),
    ]


def test_distractor_count_fixed_by_config():
    def titles(name: str, **config) -> list[str]:
        return [out.split("<paragraph>")[1].split("\n")[0] for kind, out in pairs(name, **config) if kind == "distractor"]

    assert titles("hotpotqa_original.json", distractors=1) == ["Red Fox"]
    assert titles("hotpotqa_original.json", distractors=0) == []
    assert titles("hotpotqa_original.json", distractors=3) == ["Red Fox", "Paris", "Cheese"]
    # one gold instance by default; a fixed count takes the next in rank order
    assert titles("popqa_ctxs.jsonl") == ["Bly"]
    assert titles("popqa_ctxs.jsonl", distractors=2) == ["Bly", "Jo"]
    # max_gold caps the gold instances, and with them the default distractor count
    assert [k for k, _ in pairs("hotpotqa_original.json", 0, max_gold=1)] == ["gold_chain", "gold", "distractor"]


def test_2wiki():
    assert pairs("2wiki.jsonl") == [
        ("gold_chain", "[Retrieval]<paragraph>Knowledge 1: Grey Sky\nGrey Sky is a film directed by Tom Kay. \n[SEP] \nKnowledge 2: Tom Kay\nTom Kay is a film director. His father is Bo Kay.</paragraph>[Relevant]Bo Kay[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Grey Sky\nGrey Sky is a film directed by Tom Kay.</paragraph>[Relevant]Bo Kay[No support / Contradictory][Utility:3]"),
        ("gold", "[Retrieval]<paragraph>Tom Kay\nTom Kay is a film director. His father is Bo Kay.</paragraph>[Relevant]Bo Kay[Partially supported][Utility:4]"),
        ("distractor", "[Retrieval]<paragraph>Grey Sea\nGrey Sea is a film.</paragraph>[Irrelevant]"),
        # evidences: (Grey Sky, director, Tom Kay) -> its passage; the distractor cannot be "Tom Kay" (it holds
        # the answer); (Grey Sea, director, Tom Kay) is skipped (not in Grey Sea's passage), and so is
        # (Bo Kay, occupation, actor) (no passage titled Bo Kay)
        ("fact_gold", "[Retrieval]<paragraph>Grey Sky\nGrey Sky is a film directed by Tom Kay.</paragraph>[Relevant]Tom Kay[Fully supported][Utility:5]"),
        ("fact_distractor", "[Retrieval]<paragraph>Grey Sea\nGrey Sea is a film.</paragraph>[Irrelevant]"),
        # (Tom Kay, father, Bo Kay): the closest other passage is Grey Sky (shares "Tom Kay" with the question)
        ("fact_gold", "[Retrieval]<paragraph>Tom Kay\nTom Kay is a film director. His father is Bo Kay.</paragraph>[Relevant]Bo Kay[Fully supported][Utility:5]"),
        ("fact_distractor", "[Retrieval]<paragraph>Grey Sky\nGrey Sky is a film directed by Tom Kay.</paragraph>[Irrelevant]"),
    ]
    facts = [i for i in made("2wiki.jsonl") if i.kind.startswith("fact")]
    assert [(i.id, i.input, i.train_decision) for i in facts] == [
        ("w1/fact0", "Who directed Grey Sky?", True), ("w1/fact0", "Who directed Grey Sky?", False),
        ("w1/fact1", "Who was the father of Tom Kay?", True), ("w1/fact1", "Who was the father of Tom Kay?", False),
    ]


def test_no_facts():
    assert [k for k, _ in pairs("2wiki.jsonl", facts=False)] == ["gold_chain", "gold", "gold", "distractor"]
    assert [k for k, _ in pairs("musique.jsonl", facts=False)] == ["gold_chain", "gold", "gold", "distractor"]
    # max_facts keeps the first facts in the row's order
    assert [(i.kind, i.input) for i in made("2wiki.jsonl", max_facts=1) if i.kind.startswith("fact")] == [
        ("fact_gold", "Who directed Grey Sky?"), ("fact_distractor", "Who directed Grey Sky?"),
    ]
    assert not [i for i in made("musique.jsonl", max_facts=0) if i.kind.startswith("fact")]


def test_musique_chain_in_decomposition_order():
    assert pairs("musique.jsonl") == [
        ("gold_chain", "[Retrieval]<paragraph>Knowledge 1: Zed River\nThe Zed River flows in Norway. \n[SEP] \nKnowledge 2: Norway\nNorway's capital is Oslo.</paragraph>[Relevant]Oslo[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Zed River\nThe Zed River flows in Norway.</paragraph>[Relevant]Oslo[No support / Contradictory][Utility:3]"),
        ("gold", "[Retrieval]<paragraph>Norway\nNorway's capital is Oslo.</paragraph>[Relevant]Oslo[Partially supported][Utility:4]"),
        ("distractor", "[Retrieval]<paragraph>Sweden\nSweden's capital is Stockholm.</paragraph>[Irrelevant]"),
        # hop 1 "Zed River >> country": Norway's passage holds the answer, so Sweden is the distractor
        ("fact_gold", "[Retrieval]<paragraph>Zed River\nThe Zed River flows in Norway.</paragraph>[Relevant]Norway[Fully supported][Utility:5]"),
        ("fact_distractor", "[Retrieval]<paragraph>Sweden\nSweden's capital is Stockholm.</paragraph>[Irrelevant]"),
        # hop 2 "capital of #1": Sweden ("capital") and Zed River ("Norway") tie; Sweden comes first in the row
        ("fact_gold", "[Retrieval]<paragraph>Norway\nNorway's capital is Oslo.</paragraph>[Relevant]Oslo[Fully supported][Utility:5]"),
        ("fact_distractor", "[Retrieval]<paragraph>Sweden\nSweden's capital is Stockholm.</paragraph>[Irrelevant]"),
    ]
    facts = [i for i in made("musique.jsonl") if i.kind == "fact_gold"]
    assert [(i.id, i.input) for i in facts] == [("2hop__1_2/fact0", "Which country is Zed River in?"), ("2hop__1_2/fact1", "capital of Norway")]


def test_ircot_single_gold_is_single_hop():
    assert pairs("ircot.jsonl") == [
        ("gold", "[Retrieval]<paragraph>Moon Film\nMoon Film was directed by Ann Lee.</paragraph>[Relevant]Ann Lee[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Sun Film\nSun Film is a film about the sun.</paragraph>[Irrelevant]"),
    ]


def test_popqa_gold_by_answer_string_distractors_in_rank_order():
    assert pairs("popqa_ctxs.jsonl") == [
        ("gold", "[Retrieval]<paragraph>Jo Bly\nJo Bly is a singer from Ohio.</paragraph>[Relevant]singer[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Bly\nBly is a surname.</paragraph>[Irrelevant]"),
    ]


def test_retrieved_list_without_gold_is_a_row_error():
    ex = list(read_examples(FIXTURES / "popqa_ctxs.jsonl", errors=ErrorLog()))[1]
    with pytest.raises(RowError) as info:
        instances_for(ex)
    assert (info.value.line, info.value.field) == (2, "ctxs") and info.value.file.endswith("popqa_ctxs.jsonl")


def test_arc_letter_answer_and_lettered_input():
    (ex,) = read_examples(FIXTURES / "arc_ctxs.jsonl")
    made = instances_for(ex)
    assert made[0].input == (  # the prompt body `openrag eval --task arc_c` answers (the released ARC prompt)
        "Given four answer candidates, A, B, C and D, choose the best answer choice.\n\n### Input:\n"
        "Which gas do plants take in for photosynthesis?\nA: oxygen\nB: nitrogen\nC: carbon dioxide\nD: helium"
    )
    assert [(i.kind, i.output) for i in made] == [
        ("gold", "[Retrieval]<paragraph>Photosynthesis\nPlants take in carbon dioxide and release oxygen.</paragraph>[Relevant]C[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Leaves\nLeaves have pores.</paragraph>[Irrelevant]"),
        ("no_retrieval", "[No Retrieval]C[Utility:2]"),
    ]


def test_bench_passage_without_title():
    assert pairs("bench_hotpotqa.jsonl") == [
        ("gold", "[Retrieval]<paragraph>Tokyo\nTokyo is the capital of Japan.</paragraph>[Relevant]Tokyo[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Kyoto was the old capital.</paragraph>[Irrelevant]"),
    ]


ALL_FIXTURES = [str(FIXTURES / n) for n in ("hotpotqa_original.json", "2wiki.jsonl", "musique.jsonl", "ircot.jsonl", "popqa_ctxs.jsonl", "arc_ctxs.jsonl", "bench_hotpotqa.jsonl")]


def test_every_reflection_token_but_continue_is_covered():
    result = build(ALL_FIXTURES)
    report = build_report(result)
    # [Utility:1] only ever followed an irrelevant passage's answer: relevance-only distractors drop it
    assert {t for t, n in report["per_token"].items() if n == 0} == {"[Continue to Use Evidence]", "[Utility:1]"}
    # per question (by hand): h1 5, h2 5, w1 4 + 4 facts, m1 4 + 4 facts, i1 2, popqa 2, arc 3, bench 2
    assert report["questions"] == 8 and report["instances"] == len(result.instances) == 35
    assert report["per_kind"] == {"distractor": 9, "fact_distractor": 4, "fact_gold": 4, "gold": 12, "gold_chain": 4, "no_retrieval": 2}
    tokens = report["per_token"]
    assert (tokens["[Retrieval]"], tokens["[No Retrieval]"], tokens["[Relevant]"], tokens["[Irrelevant]"]) == (33, 2, 20, 13)
    assert tokens["[Utility:2]"] == 2  # the two [No Retrieval] instances only
    # bad rows: 2wiki without context, unanswerable musique, 3 in ircot, popqa empty answers + no gold
    assert report["rows_skipped"] == 7
    assert report["skipped_by_field"] == {"context": 1, "answerable": 1, "json": 1, "answers_objects": 1, "contexts.is_supporting": 1, "answers": 1, "ctxs": 1}


def test_distractor_answers_cover_utility_1():
    report = build_report(build(ALL_FIXTURES, BuildConfig(distractor_answers=True)))
    assert {t for t, n in report["per_token"].items() if n == 0} == {"[Continue to Use Evidence]"}
    # closed-class distractors (h2, arc) get 2, the other seven 1
    assert (report["per_token"]["[Utility:1]"], report["per_token"]["[Utility:2]"]) == (7, 4)


def test_questions_per_decision():
    """One retrieval label per question: closed-class h2 (yes) and arc (choices) need none, the other six do."""
    result = build(ALL_FIXTURES)
    assert build_report(result)["questions_per_decision"] == {"[Retrieval]": 6, "[No Retrieval]": 2}
    # the rows say the same: each question (and each fact) trains its decision in exactly one instance,
    # the [No Retrieval] one for the two closed-class questions, an evidence instance for the others
    trained = [i for i in result.instances if i.train_decision]
    assert sorted(i.id for i in trained) == sorted({i.id for i in result.instances})
    assert {i.id for i in trained if i.kind == "no_retrieval"} == {"h2", "arc1"}
    assert all(i.passage is not None for i in trained if i.id not in {"h2", "arc1"})
    # --no_no_retrieval drops the [No Retrieval] instances, not the questions' label
    result = build(ALL_FIXTURES, BuildConfig(no_retrieval=False))
    assert build_report(result)["questions_per_decision"] == {"[Retrieval]": 6, "[No Retrieval]": 2}
    assert not [i for i in result.instances if i.kind == "no_retrieval"]


GOLD_EVIDENCE = str(FIXTURES / "gold_evidence.jsonl")


def _by_question(instances: list[Instance]) -> dict[str, list[tuple[str, str]]]:
    """(kind, output) per question, sorted: build() shuffles the instances."""
    out: dict[str, list[tuple[str, str]]] = {}
    for i in instances:
        out.setdefault(i.input, []).append((i.kind, i.output))
    return {q: sorted(pairs) for q, pairs in out.items()}


def test_gold_only_rows_borrow_distractors_from_the_other_rows():
    """Every other row's passages are candidates (the file is smaller than the sample); the closest to the
    question that holds no answer and is not one of the row's own paragraphs wins (untitled: no title words)."""
    result = build([GOLD_EVIDENCE])
    a1, a2 = "Blue Fox is a novel by Anna Marek.", "Anna Marek is a writer born in Lyon, France."
    b1, c1 = "Red Door is a painting by Di Fox, who lived in Paris.", "Paris is the capital of France."
    assert result.questions == {"hotpotqa": 4} and len(result.instances) == 11
    by_q = _by_question(result.instances)
    assert by_q["Which city is the birthplace of the author of Blue Fox?"] == sorted([
        ("gold_chain", f"[Retrieval]<paragraph>Knowledge 1: {a1} \n[SEP] \nKnowledge 2: {a2}</paragraph>[Relevant]Lyon[Fully supported][Utility:5]"),
        ("gold", f"[Retrieval]<paragraph>{a1}</paragraph>[Relevant]Lyon[No support / Contradictory][Utility:3]"),
        ("gold", f"[Retrieval]<paragraph>{a2}</paragraph>[Relevant]Lyon[Partially supported][Utility:4]"),
        # b1 shares "fox" (1/5), c1 nothing; row 4's copy of a1 (2/5) is this row's own paragraph: not a distractor
        ("distractor", f"[Retrieval]<paragraph>{b1}</paragraph>[Irrelevant]"),
        ("distractor", f"[Retrieval]<paragraph>{c1}</paragraph>[Irrelevant]"),
    ])
    assert by_q["Which painter of Red Door lived in Paris?"] == sorted([  # c1 shares "paris"
        ("gold", f"[Retrieval]<paragraph>{b1}</paragraph>[Relevant]Di Fox[Fully supported][Utility:5]"),
        ("distractor", f"[Retrieval]<paragraph>{c1}</paragraph>[Irrelevant]"),
    ])
    assert by_q["What is the capital of France?"] == sorted([  # b1 holds "Paris": never a distractor; a2 shares "france"
        ("gold", f"[Retrieval]<paragraph>{c1}</paragraph>[Relevant]Paris[Fully supported][Utility:5]"),
        ("distractor", f"[Retrieval]<paragraph>{a2}</paragraph>[Irrelevant]"),
    ])
    assert by_q["Who wrote Blue Fox?"] == sorted([  # a1 and a2 hold "Anna Marek"; b1 shares "fox"
        ("gold", f"[Retrieval]<paragraph>{a1}</paragraph>[Relevant]Anna Marek[Fully supported][Utility:5]"),
        ("distractor", f"[Retrieval]<paragraph>{b1}</paragraph>[Irrelevant]"),
    ])


def test_borrowed_distractors_are_seeded_and_never_the_rows_own():
    import random

    from openrag.data.build import borrow_distractors

    def borrowed(seed: int) -> list[list[str]]:
        examples = list(read_examples(GOLD_EVIDENCE))
        own = [{p.text for p in ex.passages} for ex in examples]
        borrow_distractors(examples, random.Random(seed), sample=3)
        out = []
        for ex, texts in zip(examples, own):
            extra = [p for p in ex.passages if not p.is_gold]
            assert ex.passages[: len(texts)] == [p for p in ex.passages if p.is_gold]  # gold first, unchanged
            assert all(p.text not in texts for p in extra) and len(extra) <= 3
            out.append([p.text for p in extra])
        assert any(out)
        return out

    assert borrowed(0) == borrowed(0)
    assert len({json.dumps(borrowed(s)) for s in range(5)}) > 1  # the sample depends on the seed
    # rows that have non-gold passages already, and ranked lists, are left as they are
    mixed = list(read_examples(FIXTURES / "hotpotqa_original.json")) + list(read_examples(FIXTURES / "bench_hotpotqa.jsonl"))
    before = [list(ex.passages) for ex in mixed]
    borrow_distractors(mixed + list(read_examples(GOLD_EVIDENCE)), random.Random(0), sample=3)
    assert [ex.passages for ex in mixed] == before


def test_gold_evidence_build_is_deterministic_for_a_seed():
    rows = lambda seed: [i.to_row() for i in build([GOLD_EVIDENCE, *ALL_FIXTURES], BuildConfig(seed=seed)).instances]  # noqa: E731
    assert rows(5) == rows(5)


def test_deterministic_for_a_seed():
    rows = lambda seed: [i.to_row() for i in build(ALL_FIXTURES, BuildConfig(seed=seed)).instances]  # noqa: E731
    assert rows(3) == rows(3)
    assert rows(3) != rows(4) and sorted(map(json.dumps, rows(3))) == sorted(map(json.dumps, rows(4)))


def test_max_per_dataset_samples_questions():
    result = build(ALL_FIXTURES, BuildConfig(max_per_dataset=1))
    assert result.questions["hotpotqa"] == 1 and result.sampled_out["hotpotqa"] == 3  # h1, h2, i1, bench


def test_exclusion_by_id_and_by_normalised_question(tmp_path):
    by_id = tmp_path / "eval_a.jsonl"
    by_id.write_text(json.dumps({"_id": "h1", "question": "something else entirely"}) + "\n")
    by_text = tmp_path / "eval_b.jsonl"  # another id, the same question up to case, punctuation and articles
    by_text.write_text(json.dumps({"id": "zzz", "question": "what is THE capital of japan"}) + "\n")
    result = build(ALL_FIXTURES, exclude=Exclusion.from_files([str(by_id), str(by_text)]))
    ids = {i.id for i in result.instances}
    assert "h1" not in ids and "hotpotqa-1" not in ids and "h2" in ids
    assert result.excluded == {"hotpotqa": 2}


def test_exclusion_reads_rows_a_qa_reader_rejects():
    excl = Exclusion.from_files([f"{FIXTURES / 'ircot.jsonl'}:skip=2"])  # i3 has an empty answer, i4 no gold
    assert excl.ids == {"i3", "i4"} and normalize_question("Who wrote Star Book?") in excl.questions


def test_exclusion_refuses_an_unreadable_row_in_its_window(tmp_path):
    """Line 2 of ircot.jsonl is broken JSON: skipping it would let its question into the training data."""
    ircot = FIXTURES / "ircot.jsonl"
    for spec in (str(ircot), f"{ircot}:skip=1:limit=1"):
        with pytest.raises(ValueError, match=rf"^--exclude {re.escape(spec)}: {re.escape(str(ircot))}:2: field 'json': malformed JSON line .*repair it in the file"):
            Exclusion.from_files([spec])
    assert Exclusion.from_files([f"{ircot}:limit=1"]).ids == {"i1"}  # a broken row outside the window is no concern
    rows = tmp_path / "eval.jsonl"
    rows.write_text('{"id": "a", "question": "Q?"}\n["not", "a", "row"]\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(rows))}:2: field 'row': expected a JSON object, got list"):
        Exclusion.from_files([str(rows)])


def test_exclusion_refuses_a_json_list_broken_before_its_window(tmp_path):
    """A broken JSON list stops the reader at its error: the rows of the window after it would never be read."""
    path = tmp_path / "eval.json"
    path.write_text('[\n{"id": "a", "question": "Q one?"},\n{"id": "b", "question": "Q two?" "x"},\n{"id": "c", "question": "Q three?"}\n]')
    for spec in (str(path), f"{path}:skip=2"):
        with pytest.raises(ValueError, match=rf"^--exclude {re.escape(spec)}: {re.escape(str(path))}:3: field 'json': .*repair"):
            Exclusion.from_files([spec])
    assert Exclusion.from_files([f"{path}:limit=1"]).ids == {"a"}


def run_command(argv: list[str]) -> int:
    from openrag.commands import data

    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    return data.run(parser.parse_args(argv))


def test_command_writes_conversation_lines_and_stats(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    assert run_command(["build", *ALL_FIXTURES, "--output", str(out), "--seed", "1", "--tokenizer", "smollm2", "--max_length", "64"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 35
    base = {"instruction", "conversation", "corpus", "id", "dataset", "kind"}
    assert all(set(r) == base or set(r) == base | {"train_decision"} for r in rows)
    trained = sorted(r["id"] for r in rows if "train_decision" not in r)  # one decision target per question
    assert trained == sorted({r["id"] for r in rows})
    assert all(r["train_decision"] is False for r in rows if "train_decision" in r)
    assert rows[0]["corpus"] == "" and len(rows[0]["conversation"]) == 1
    stats = json.loads((tmp_path / "train.stats.json").read_text())
    assert stats["instances"] == 35 and set(stats["per_token"]) == set(REFLECTION_TOKENS)
    assert stats["questions_per_decision"] == {"[Retrieval]": 6, "[No Retrieval]": 2}
    assert stats["tokens"]["instances"] == 35 and 0 < stats["tokens"]["truncated"] < 35
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl", "train.stats.json"]
    printed = capsys.readouterr().out
    assert "instances 35" in printed and "questions per retrieval label: [Retrieval] 6, [No Retrieval] 2" in printed


def test_command_options_reach_the_build(tmp_path):
    out = tmp_path / "train.jsonl"
    argv = ["build", *ALL_FIXTURES, "--output", str(out), "--tokenizer", "none"]
    assert run_command([*argv, "--distractors", "1", "--distractor_answers", "--no_facts"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert not [k for k in kinds if k.startswith("fact")] and kinds.count("distractor") == 8  # one per question
    assert all(r["conversation"][0]["output"].endswith("]") and "[Utility:" in r["conversation"][0]["output"] for r in rows if r["kind"] == "distractor")


@pytest.mark.parametrize("flag, value, said", [
    ("--max_gold", "0", "--max_gold must be at least 1"),
    ("--max_gold", "-1", "--max_gold must be at least 1"),
    ("--distractors", "-1", "--distractors must be 0 or more"),
    ("--max_facts", "-2", "--max_facts must be 0 or more"),
    ("--max_per_dataset", "-1", "--max_per_dataset must be 0 or more"),
])
def test_command_refuses_numeric_flags_out_of_range_before_the_work(tmp_path, monkeypatch, flag, value, said):
    import openrag.data.build as build_module

    monkeypatch.setattr(build_module.Exclusion, "from_files", lambda *a, **k: pytest.fail("the work began"))
    out = tmp_path / "train.jsonl"
    with pytest.raises(ValueError, match=f"^{re.escape(said)}.*, got {value}$"):
        run_command(["build", *ALL_FIXTURES, "--output", str(out), "--tokenizer", "none", flag, value, "--no_chain"])
    assert not out.exists()


def test_config_refuses_max_gold_0_for_python_callers_too():
    with pytest.raises(ValueError, match="max_gold must be at least 1"):
        BuildConfig(max_gold=0)
    with pytest.raises(ValueError, match="distractors must be 0 or more"):
        BuildConfig(distractors=-1)


def test_command_strict_stops_and_writes_nothing(tmp_path):
    out = tmp_path / "train.jsonl"
    with pytest.raises(RowError, match="ircot.jsonl:2"):
        run_command(["build", str(FIXTURES / "ircot.jsonl"), "--output", str(out), "--strict", "--tokenizer", "none"])
    assert not out.exists()


def test_released_file_stats(capsys):
    assert run_command(["stats", str(FIXTURES / "released_train.jsonl"), "--tokenizer", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["instances"] == 2 and report["per_token"]["[No Retrieval]"] == 1


class _FavourToken(torch.nn.Module):
    """A stand-in LM whose next-token distribution always favours one token id."""

    def __init__(self, vocab: int, favoured: int):
        super().__init__()
        self.vocab, self.favoured = vocab, favoured
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favoured] = 10.0
        return argparse.Namespace(logits=logits)


def test_critic_relabels_support_and_utility(smollm2_tokenizer):
    from openrag.data.critic import Critic

    tok = smollm2_tokenizer
    favoured = tok("not", add_special_tokens=False)["input_ids"][0]  # "not supported" is one token + " supported"
    critic = Critic(_FavourToken(len(tok), favoured), tok)
    inst = Instance(id="x", dataset="d", kind="gold", input="Q?", answer="A", passage="P", relevant=True, support="[Fully supported]", utility=5)
    critic.relabel(inst)
    assert inst.support == "[No support / Contradictory]" and inst.support in GROUNDEDNESS_TOKENS
    assert 1 <= inst.utility <= 5 and inst.output.endswith(f"[No support / Contradictory][Utility:{inst.utility}]")


def test_critic_with_a_tiny_llama(smollm2_tokenizer):
    from openrag.data.critic import Critic

    from .conftest import make_tiny_llama_for

    critic = Critic(make_tiny_llama_for(smollm2_tokenizer), smollm2_tokenizer)
    inst = Instance(id="x", dataset="d", kind="distractor", input="Q?", answer="A", passage="P", relevant=False, utility=1)
    critic.relabel(inst)
    assert inst.support is None and 1 <= inst.utility <= 5


def test_build_with_a_critic_checkpoint_records_its_dtype(tmp_path, smollm2_folder):
    from .conftest import save_tiny_served_model

    critic = save_tiny_served_model(smollm2_folder, tmp_path / "critic", max_positions=512)
    out = tmp_path / "train.jsonl"
    argv = ["build", str(FIXTURES / "ircot.jsonl"), "--output", str(out), "--tokenizer", "none", "--critic", str(critic)]
    assert run_command([*argv, "--dtype", "bfloat16"]) == 0
    report = json.loads(out.with_suffix(".stats.json").read_text())
    assert report["critic"] == str(critic) and report["critic_dtype"] == "bfloat16"
    assert run_command(argv) == 0  # the default under the suite's float32 (conftest)
    assert json.loads(out.with_suffix(".stats.json").read_text())["critic_dtype"] == "float32"


EVAL_HELD_OUT = ["hotpotqa/hotpotqa_dev_ircot500.jsonl", "musique/musique_dev200.jsonl", "2wikimultihopqa/2wiki_dev200.jsonl"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")
def test_shared_training_split_never_holds_an_evaluation_question():
    """The bundled model's split: train files plus dev files minus their first 100 rows (held out)."""
    inputs = [str(SHARED / "hotpotqa/hotpotqa_train100.json"), str(SHARED / "musique/musique_train100.json")]
    inputs += [f"{SHARED / name}:skip=100" for name in EVAL_HELD_OUT]
    held_out = [f"{SHARED / name}:limit=100" for name in EVAL_HELD_OUT]
    held_out += [str(SHARED / "popqa/popqa_longtail100_ctxs.jsonl"), str(SHARED / "arc_challenge/arc_challenge100_ctxs.jsonl")]
    result = build(inputs, exclude=Exclusion.from_files(held_out))
    eval_questions, eval_ids = set(), set()
    for spec in held_out:
        for ex in read_examples(spec, errors=ErrorLog()):
            eval_questions.add(normalize_question(ex.question))
            eval_ids.add(ex.id)
    assert result.instances
    assert not {i.id for i in result.instances} & eval_ids
    assert not {normalize_question(i.input) for i in result.instances} & eval_questions
    assert set(result.questions) == {"hotpotqa", "musique", "2wikimultihopqa"}


CITEPROBE = SHARED / "hotpotqa/hotpotqa_train500_citeprobe.json"


@pytest.mark.skipif(not CITEPROBE.is_file(), reason="../shared/data is not here")
def test_distractor_train_rows_build_from_their_own_paragraphs_with_one_decision_each():
    rows = list(read_examples(f"{CITEPROBE}:limit=40", errors=ErrorLog()))
    result = build([f"{CITEPROBE}:limit=40"], BuildConfig(chain=False, seed=0))
    assert sum(result.questions.values()) == 40 and not result.errors.count
    by_id: dict[str, list[Instance]] = {}
    for inst in result.instances:
        by_id.setdefault(inst.id, []).append(inst)
    with_distractors = 0
    for row in rows:
        made = by_id[row.id]
        assert sum(i.train_decision for i in made) == 1  # one retrieval target per question
        own = {f"{p.title}\n{p.text}" for p in row.passages}
        gold = {f"{p.title}\n{p.text}" for p in row.passages if p.is_gold}
        assert {i.passage for i in made if i.kind == "gold"} == gold
        distractors = [i.passage for i in made if i.kind == "distractor"]
        assert set(distractors) <= own - gold  # the row's own real distractors, never borrowed
        with_distractors += bool(distractors)
    assert with_distractors >= 38  # a row whose other paragraphs all contain the answer has none


def test_a_question_repeated_across_inputs_is_built_once(tmp_path):
    first = FIXTURES / "gold_evidence.jsonl"
    again = tmp_path / "again.jsonl"
    again.write_text(first.read_text().splitlines()[0] + "\n")
    result = build([str(first), str(again)])
    assert result.duplicates == {"hotpotqa": 1}
    assert build_report(result)["duplicates"] == 1
    assert sum(result.questions.values()) == sum(build([str(first)]).questions.values())


def test_held_out_questions_leave_the_training_instances_whole():
    inputs = [str(FIXTURES / "hotpotqa_original.json"), str(FIXTURES / "gold_evidence.jsonl"), str(FIXTURES / "musique.jsonl")]
    everything = build(inputs, BuildConfig(seed=3))
    split = build(inputs, BuildConfig(seed=3, held_out=2))
    held_ids = {i.id.split("/")[0] for i in split.held_out}
    assert split.held_out_questions == 2 == len(held_ids)
    assert not held_ids & {i.id.split("/")[0] for i in split.instances}
    assert sum(split.questions.values()) == sum(everything.questions.values()) - 2
    assert sorted(i.output for i in split.instances + split.held_out) == sorted(i.output for i in everything.instances)
    assert build_report(split)["held_out_instances"] == len(split.held_out)
