import copy

import torch

from openrag import REFLECTION_TOKENS, add_reflection_tokens
from openrag.model.reflection import reflection_token_ids

from .conftest import make_tiny_llama_for

RELEASED_ORDER = [
    "[No Retrieval]", "[Retrieval]", "[Continue to Use Evidence]", "[Irrelevant]", "[Relevant]",
    "<paragraph>", "</paragraph>", "[Utility:1]", "[Utility:2]", "[Utility:3]", "[Utility:4]",
    "[Utility:5]", "[Fully supported]", "[Partially supported]", "[No support / Contradictory]",
]


def test_tokens_are_added_in_spec_order_with_mean_rows(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    model = make_tiny_llama_for(tokenizer)
    n0 = len(tokenizer)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    added = add_reflection_tokens(model, tokenizer)
    assert added == 15 and list(REFLECTION_TOKENS) == RELEASED_ORDER
    ids = reflection_token_ids(tokenizer)
    assert [ids[t] for t in RELEASED_ORDER] == list(range(n0, n0 + 15))
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == n0 + 15
    torch.testing.assert_close(emb[n0:], old_in.mean(0).expand(15, -1))
    torch.testing.assert_close(model.get_output_embeddings().weight[n0:], old_out.mean(0).expand(15, -1))
    assert torch.equal(emb[:n0], old_in)
    # each token encodes to exactly one id, also inside text
    enc = tokenizer("x[Retrieval]<paragraph>y</paragraph>[Utility:5]", add_special_tokens=False).input_ids
    assert ids["[Retrieval]"] in enc and ids["[Utility:5]"] in enc
    assert add_reflection_tokens(model, tokenizer) == 0  # idempotent


def test_tied_embeddings_stay_tied(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    model = make_tiny_llama_for(tokenizer, tie_word_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    add_reflection_tokens(model, tokenizer)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)


def test_pad_token_added_when_missing(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.pad_token = None
    model = make_tiny_llama_for(tokenizer, pad_token_id=None)
    n0 = len(tokenizer)
    assert add_reflection_tokens(model, tokenizer) == 16
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == n0 + 15  # after the 15 reflection tokens
    assert reflection_token_ids(tokenizer)["[No Retrieval]"] == n0
    assert model.config.pad_token_id == tokenizer.pad_token_id
