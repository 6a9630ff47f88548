"""Tokenisation for training: the label mask checked token by token against a hand-written mask."""

from __future__ import annotations

import copy

import pytest

from openrag import add_reflection_tokens
from openrag.data import IGNORE_INDEX, PROMPT_TEMPLATE, tokenize_instance


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)
    add_reflection_tokens(None, tok)
    return tok


def trained_tokens(tokenizer, result):
    tokens = tokenizer.convert_ids_to_tokens(result.input_ids)
    return [(t, label != IGNORE_INDEX) for t, label in zip(tokens, result.labels)]


def test_prompt_template():
    assert PROMPT_TEMPLATE.format(input="Q?") == "### Instruction:\nQ?\n\n### Response:\n"


def test_mask_token_by_token(tokenizer):
    """Two passages: each inside is masked on its own, so the tokens between them are trained."""
    output = "[Retrieval]<paragraph>Alpha beta gamma</paragraph>[Irrelevant][Retrieval]<paragraph>Delta</paragraph>[Relevant]Paris[Fully supported][Utility:5]"
    result = tokenize_instance(tokenizer, "Where is it?", output, max_length=512)
    # Written by hand from the rules: prompt masked; <paragraph>/</paragraph> trained, their inside masked.
    expected = [
        ("###", False), ("ĠInstruction", False), (":", False), ("Ċ", False),
        ("Where", False), ("Ġis", False), ("Ġit", False), ("?", False), ("Ċ", False), ("Ċ", False),
        ("###", False), ("ĠResponse", False), (":", False), ("Ċ", False),
        ("[Retrieval]", True), ("<paragraph>", True),
        ("Alpha", False), ("Ġbeta", False), ("Ġgamma", False),
        ("</paragraph>", True), ("[Irrelevant]", True), ("[Retrieval]", True), ("<paragraph>", True),
        ("Delta", False),
        ("</paragraph>", True), ("[Relevant]", True), ("Paris", True), ("[Fully supported]", True), ("[Utility:5]", True),
        ("<|im_end|>", True),
    ]
    assert trained_tokens(tokenizer, result) == expected
    assert [label for label in result.labels if label != IGNORE_INDEX] == [i for i, (_, t) in zip(result.input_ids, expected) if t]
    assert result.truncated is False


def test_no_retrieval_and_multi_token_answer(tokenizer):
    result = tokenize_instance(tokenizer, "Q", "[No Retrieval]New York[Utility:4]", max_length=64)
    assert trained_tokens(tokenizer, result)[-5:] == [
        ("[No Retrieval]", True), ("New", True), ("ĠYork", True), ("[Utility:4]", True), ("<|im_end|>", True),
    ]
    assert not any(t for _, t in trained_tokens(tokenizer, result)[:-5])


def test_unclosed_paragraph_masks_to_the_end_but_eos(tokenizer):
    result = tokenize_instance(tokenizer, "Q", "[Retrieval]<paragraph>open text", max_length=64)
    assert trained_tokens(tokenizer, result)[-5:] == [
        ("[Retrieval]", True), ("<paragraph>", True), ("open", False), ("Ġtext", False), ("<|im_end|>", True),
    ]


def test_truncation_shortens_the_longest_passage_first(tokenizer):
    long = " ".join(["word"] * 30)
    output = f"[Retrieval]<paragraph>{long}</paragraph>[Irrelevant][Retrieval]<paragraph>short text</paragraph>[Relevant]Lyon[Fully supported][Utility:5]"
    full = tokenize_instance(tokenizer, "Q?", output, max_length=10_000)
    cut = tokenize_instance(tokenizer, "Q?", output, max_length=len(full.input_ids) - 10)
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) - 10
    text = tokenizer.decode(cut.input_ids)
    assert text.count("word") == 20 and "short text" in text  # only the long passage lost tokens
    # every trained token survives, in order
    assert [x for x in cut.labels if x != IGNORE_INDEX] == [x for x in full.labels if x != IGNORE_INDEX]


def test_truncation_then_shortens_the_instruction_and_keeps_the_target(tokenizer):
    question = " ".join(["why"] * 40)
    output = "[Retrieval]<paragraph>abc def</paragraph>[Relevant]Lyon[Partially supported][Utility:4]"
    full = tokenize_instance(tokenizer, question, output, max_length=10_000)
    cut = tokenize_instance(tokenizer, question, output, max_length=len(full.input_ids) - 20)
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) - 20
    text = tokenizer.decode(cut.input_ids)
    assert text.startswith("### Instruction:\n") and "### Response:\n" in text
    assert text.endswith("[Retrieval]<paragraph></paragraph>[Relevant]Lyon[Partially supported][Utility:4]<|im_end|>")


def test_a_target_longer_than_max_length_is_cut(tokenizer):
    result = tokenize_instance(tokenizer, "Q", "[No Retrieval]" + "la " * 50 + "[Utility:5]", max_length=16)
    assert result.truncated and len(result.input_ids) == len(result.labels) == 16


def test_tokenizer_without_reflection_tokens_is_refused(smollm2_tokenizer):
    with pytest.raises(ValueError, match="add_reflection_tokens"):
        tokenize_instance(smollm2_tokenizer, "Q", "[No Retrieval]A[Utility:5]", max_length=64)


def test_train_decision_false_masks_exactly_the_leading_decision_token(tokenizer):
    output = "[Retrieval]<paragraph>Delta</paragraph>[Relevant]Paris[Fully supported][Utility:5]"
    trained = tokenize_instance(tokenizer, "Where is it?", output, max_length=512)
    untrained = tokenize_instance(tokenizer, "Where is it?", output, max_length=512, train_decision=False)
    assert untrained.input_ids == trained.input_ids
    assert trained_tokens(tokenizer, untrained)[-9:] == [
        ("[Retrieval]", False), ("<paragraph>", True), ("Delta", False), ("</paragraph>", True),
        ("[Relevant]", True), ("Paris", True), ("[Fully supported]", True), ("[Utility:5]", True), ("<|im_end|>", True),
    ]
    differs = [k for k, (a, b) in enumerate(zip(trained.labels, untrained.labels)) if a != b]
    assert differs == [len(trained.input_ids) - 9] and untrained.labels[differs[0]] == IGNORE_INDEX


def test_train_decision_false_masks_no_retrieval_too_and_only_the_first(tokenizer):
    result = tokenize_instance(tokenizer, "Q", "[No Retrieval]New York[Utility:4]", max_length=64, train_decision=False)
    assert trained_tokens(tokenizer, result)[-5:] == [
        ("[No Retrieval]", False), ("New", True), ("ĠYork", True), ("[Utility:4]", True), ("<|im_end|>", True),
    ]
    # a second [Retrieval] later in the output is a decision the instance does train
    output = "[Retrieval]<paragraph>A</paragraph>[Irrelevant][Retrieval]<paragraph>B</paragraph>[Relevant]C[Fully supported][Utility:5]"
    tokens = trained_tokens(tokenizer, tokenize_instance(tokenizer, "Q", output, max_length=64, train_decision=False))
    assert [t for t in tokens if t[0] == "[Retrieval]"] == [("[Retrieval]", False), ("[Retrieval]", True)]


def test_train_decision_false_skips_a_whitespace_piece_before_the_decision(tokenizer):
    # a tokenizer that puts a piece before an added token (here: a leading space in the output) must not
    # leave the decision trained
    result = tokenize_instance(tokenizer, "Q", " [No Retrieval]York[Utility:4]", max_length=64, train_decision=False)
    tokens = trained_tokens(tokenizer, result)
    assert ("[No Retrieval]", False) in tokens and ("[No Retrieval]", True) not in tokens


def test_train_decision_false_leaves_other_leading_tokens_trained(tokenizer):
    for output in ("Paris[Utility:5]", "[Relevant]Paris[Fully supported][Utility:5]", "[Utility:5]"):
        a = tokenize_instance(tokenizer, "Q", output, max_length=64)
        b = tokenize_instance(tokenizer, "Q", output, max_length=64, train_decision=False)
        assert (a.input_ids, a.labels) == (b.input_ids, b.labels), output


def test_relevance_only_output_ends_without_eos(tokenizer):
    result = tokenize_instance(tokenizer, "Q", "[Retrieval]<paragraph>Alpha beta</paragraph>[Irrelevant]", max_length=64)
    assert trained_tokens(tokenizer, result)[-6:] == [
        ("[Retrieval]", True), ("<paragraph>", True), ("Alpha", False), ("Ġbeta", False), ("</paragraph>", True), ("[Irrelevant]", True),
    ]
    assert tokenizer.eos_token_id not in result.input_ids
    relevant = tokenize_instance(tokenizer, "Q", "[Retrieval]<paragraph>Alpha</paragraph>[Relevant]", max_length=64, train_decision=False)
    assert trained_tokens(tokenizer, relevant)[-5:] == [
        ("[Retrieval]", False), ("<paragraph>", True), ("Alpha", False), ("</paragraph>", True), ("[Relevant]", True),
    ]


def test_outputs_that_go_on_after_relevance_keep_eos(tokenizer):
    for output in ("[Retrieval]<paragraph>Alpha</paragraph>[Irrelevant]Lyon[Utility:1]", "[No Retrieval]yes[Utility:2]"):
        tokens = trained_tokens(tokenizer, tokenize_instance(tokenizer, "Q", output, max_length=64))
        assert tokens[-1] == ("<|im_end|>", True), output
    # [Irrelevant] in the middle (the Self-RAG multi-passage form) does not end the target
    output = "[Retrieval]<paragraph>A</paragraph>[Irrelevant][Retrieval]<paragraph>B</paragraph>[Relevant]C[Fully supported][Utility:5]"
    assert trained_tokens(tokenizer, tokenize_instance(tokenizer, "Q", output, max_length=64))[-1] == ("<|im_end|>", True)


def test_relevance_only_truncation_keeps_the_relevance_token(tokenizer):
    output = "[Retrieval]<paragraph>" + " ".join(["word"] * 30) + "</paragraph>[Irrelevant]"
    full = tokenize_instance(tokenizer, "Q?", output, max_length=10_000)
    cut = tokenize_instance(tokenizer, "Q?", output, max_length=len(full.input_ids) - 10)
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) - 10
    assert tokenizer.decode(cut.input_ids).endswith(" ".join(["word"] * 20) + "</paragraph>[Irrelevant]")
    assert [x for x in cut.labels if x != IGNORE_INDEX] == [x for x in full.labels if x != IGNORE_INDEX]


def test_train_decision_reaches_the_training_arrays(tokenizer, tmp_path):
    """build row -> load_training_instances -> tokenize_instances: the flagged row's [Retrieval] is not a target."""
    import json

    from openrag.data import load_training_instances
    from openrag.training.data import tokenize_instances

    output = "[Retrieval]<paragraph>P</paragraph>[Relevant]yes[Partially supported][Utility:4]"
    rows = [{"instruction": "", "conversation": [{"input": "Is it?", "output": output}], "corpus": "", **extra} for extra in ({"train_decision": False}, {})]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tokenize_instances(tokenizer, load_training_instances(tmp_path / "train.jsonl"), max_length=64)
    retrieval = tokenizer.convert_tokens_to_ids("[Retrieval]")
    first, second = data[0], data[1]
    assert first["input_ids"].tolist() == second["input_ids"].tolist()
    k = first["input_ids"].tolist().index(retrieval)
    assert (first["labels"][k].item(), second["labels"][k].item()) == (IGNORE_INDEX, retrieval)
    assert (first["labels"] != second["labels"]).sum().item() == 1
