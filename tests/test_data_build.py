"""Building instances: expected outputs written by hand per format, exclusion, determinism, the command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from openrag.data import ErrorLog, RowError, normalize_question, read_examples
from openrag.data.build import BuildConfig, Exclusion, Instance, build, build_report, instances_for, write_jsonl_atomic
from openrag.reflection import GROUNDEDNESS_TOKENS, REFLECTION_TOKENS

FIXTURES = Path(__file__).parent / "data_fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pairs(name: str, index: int = 0) -> list[tuple[str, str]]:
    ex = list(read_examples(FIXTURES / name, errors=ErrorLog()))[index]
    return [(i.kind, i.output) for i in instances_for(ex)]


def test_hotpotqa_bridge():
    chain = (
        "Knowledge 1: Blue Fox\nBlue Fox is a novel by Anna Marek. It was published in 1990. \n[SEP] \n"
        "Knowledge 2: Anna Marek\nAnna Marek is a writer. She was born in Lyon."
    )
    assert pairs("hotpotqa_original.json", 0) == [
        ("gold_chain", f"[Retrieval]<paragraph>{chain}</paragraph>[Relevant]Lyon[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Blue Fox\nBlue Fox is a novel by Anna Marek. It was published in 1990.</paragraph>[Relevant]Lyon[No support / Contradictory][Utility:3]"),
        ("gold", "[Retrieval]<paragraph>Anna Marek\nAnna Marek is a writer. She was born in Lyon.</paragraph>[Relevant]Lyon[Partially supported][Utility:4]"),
        # closest non-gold first (shares "fox" with the question and a gold title); "Lyon Station" holds the answer: never a distractor
        ("distractor", "[Retrieval]<paragraph>Red Fox\nThe red fox is a mammal found in many countries.</paragraph>[Irrelevant]Lyon[Utility:1]"),
        ("distractor", "[Retrieval]<paragraph>Paris\nParis is the capital city of France.</paragraph>[Irrelevant]Lyon[Utility:1]"),
    ]


def test_hotpotqa_yes_no_comparison():
    chain = "Knowledge 1: Blue Fox\nBlue Fox is a novel by Anna Marek. \n[SEP] \nKnowledge 2: Green Owl\nGreen Owl is a novel."
    assert pairs("hotpotqa_original.json", 1) == [
        ("gold_chain", f"[Retrieval]<paragraph>{chain}</paragraph>[Relevant]yes[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Blue Fox\nBlue Fox is a novel by Anna Marek.</paragraph>[Relevant]yes[Partially supported][Utility:4]"),
        ("gold", "[Retrieval]<paragraph>Green Owl\nGreen Owl is a novel.</paragraph>[Relevant]yes[Partially supported][Utility:4]"),
        ("distractor", "[Retrieval]<paragraph>Owl\nOwls are birds.</paragraph>[Irrelevant]yes[Utility:2]"),
        ("no_retrieval", "[No Retrieval]yes[Utility:2]"),
    ]


def test_2wiki():
    assert pairs("2wiki.jsonl") == [
        ("gold_chain", "[Retrieval]<paragraph>Knowledge 1: Grey Sky\nGrey Sky is a film directed by Tom Kay. \n[SEP] \nKnowledge 2: Tom Kay\nTom Kay is a film director. His father is Bo Kay.</paragraph>[Relevant]Bo Kay[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Grey Sky\nGrey Sky is a film directed by Tom Kay.</paragraph>[Relevant]Bo Kay[No support / Contradictory][Utility:3]"),
        ("gold", "[Retrieval]<paragraph>Tom Kay\nTom Kay is a film director. His father is Bo Kay.</paragraph>[Relevant]Bo Kay[Partially supported][Utility:4]"),
        ("distractor", "[Retrieval]<paragraph>Grey Sea\nGrey Sea is a film.</paragraph>[Irrelevant]Bo Kay[Utility:1]"),
    ]


def test_musique_chain_in_decomposition_order():
    assert pairs("musique.jsonl") == [
        ("gold_chain", "[Retrieval]<paragraph>Knowledge 1: Zed River\nThe Zed River flows in Norway. \n[SEP] \nKnowledge 2: Norway\nNorway's capital is Oslo.</paragraph>[Relevant]Oslo[Fully supported][Utility:5]"),
        ("gold", "[Retrieval]<paragraph>Zed River\nThe Zed River flows in Norway.</paragraph>[Relevant]Oslo[No support / Contradictory][Utility:3]"),
        ("gold", "[Retrieval]<paragraph>Norway\nNorway's capital is Oslo.</paragraph>[Relevant]Oslo[Partially supported][Utility:4]"),
        ("distractor", "[Retrieval]<paragraph>Sweden\nSweden's capital is Stockholm.</paragraph>[Irrelevant]Oslo[Utility:1]"),
    ]


def test_ircot_single_gold_is_single_hop():
    assert pairs("ircot.jsonl") == [
        ("gold", "[Retrieval]<paragraph>Moon Film\nMoon Film was directed by Ann Lee.</paragraph>[Relevant]Ann Lee[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Sun Film\nSun Film is a film about the sun.</paragraph>[Irrelevant]Ann Lee[Utility:1]"),
    ]


def test_popqa_gold_by_answer_string_distractors_in_rank_order():
    assert pairs("popqa_ctxs.jsonl") == [
        ("gold", "[Retrieval]<paragraph>Jo Bly\nJo Bly is a singer from Ohio.</paragraph>[Relevant]singer[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Bly\nBly is a surname.</paragraph>[Irrelevant]singer[Utility:1]"),
        ("distractor", "[Retrieval]<paragraph>Jo\nJo is a given name.</paragraph>[Irrelevant]singer[Utility:1]"),
    ]


def test_retrieved_list_without_gold_is_a_row_error():
    ex = list(read_examples(FIXTURES / "popqa_ctxs.jsonl", errors=ErrorLog()))[1]
    with pytest.raises(RowError) as info:
        instances_for(ex)
    assert (info.value.line, info.value.field) == (2, "ctxs") and info.value.file.endswith("popqa_ctxs.jsonl")


def test_arc_letter_answer_and_lettered_input():
    (ex,) = read_examples(FIXTURES / "arc_ctxs.jsonl")
    made = instances_for(ex)
    assert made[0].input == (
        "Given 4 answer candidates, A, B, C and D, choose the best answer choice.\n\n"
        "Which gas do plants take in for photosynthesis?\nA: oxygen\nB: nitrogen\nC: carbon dioxide\nD: helium"
    )
    assert [(i.kind, i.output) for i in made] == [
        ("gold", "[Retrieval]<paragraph>Photosynthesis\nPlants take in carbon dioxide and release oxygen.</paragraph>[Relevant]C[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Leaves\nLeaves have pores.</paragraph>[Irrelevant]C[Utility:2]"),
        ("no_retrieval", "[No Retrieval]C[Utility:2]"),
    ]


def test_bench_passage_without_title():
    assert pairs("bench_hotpotqa.jsonl") == [
        ("gold", "[Retrieval]<paragraph>Tokyo\nTokyo is the capital of Japan.</paragraph>[Relevant]Tokyo[Fully supported][Utility:5]"),
        ("distractor", "[Retrieval]<paragraph>Kyoto was the old capital.</paragraph>[Irrelevant]Tokyo[Utility:1]"),
    ]


ALL_FIXTURES = [str(FIXTURES / n) for n in ("hotpotqa_original.json", "2wiki.jsonl", "musique.jsonl", "ircot.jsonl", "popqa_ctxs.jsonl", "arc_ctxs.jsonl", "bench_hotpotqa.jsonl")]


def test_every_reflection_token_but_continue_is_covered():
    result = build(ALL_FIXTURES)
    report = build_report(result)
    assert {t for t, n in report["per_token"].items() if n == 0} == {"[Continue to Use Evidence]"}
    assert report["questions"] == 8 and report["instances"] == len(result.instances) == 28
    # bad rows: 2wiki without context, unanswerable musique, 3 in ircot, popqa empty answers + no gold
    assert report["rows_skipped"] == 7
    assert report["skipped_by_field"] == {"context": 1, "answerable": 1, "json": 1, "answers_objects": 1, "contexts.is_supporting": 1, "answers": 1, "ctxs": 1}


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
    excl = Exclusion.from_files([str(FIXTURES / "ircot.jsonl")])
    assert {"i1", "i3", "i4"} <= excl.ids and normalize_question("Who wrote Star Book?") in excl.questions


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "train.jsonl"

    def rows():
        yield {"a": 1}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl_atomic(target, rows())
    assert list(tmp_path.iterdir()) == []
    assert write_jsonl_atomic(target, [{"a": 1}, {"a": 2}]) == 2 and len(target.read_text().splitlines()) == 2


def run_command(argv: list[str]) -> int:
    from openrag.commands import data

    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    return data.run(parser.parse_args(argv))


def test_command_writes_conversation_lines_and_stats(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    assert run_command(["build", *ALL_FIXTURES, "--output", str(out), "--seed", "1", "--tokenizer", "smollm2", "--max_length", "64"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 28
    assert set(rows[0]) == {"instruction", "conversation", "corpus", "id", "dataset", "kind"}
    assert rows[0]["corpus"] == "" and len(rows[0]["conversation"]) == 1
    stats = json.loads((tmp_path / "train.stats.json").read_text())
    assert stats["instances"] == 28 and set(stats["per_token"]) == set(REFLECTION_TOKENS)
    assert stats["tokens"]["instances"] == 28 and 0 < stats["tokens"]["truncated"] < 28
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl", "train.stats.json"]
    assert "instances 28" in capsys.readouterr().out


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
