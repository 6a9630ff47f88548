"""OpenRAG: scoring against hand-computed values, the modes and rules at their thresholds' edges, passages
that overflow the context, the answer object and ``openrag ask``. Models: a tiny random Llama with the
bundled tokenizer (plus the 15 reflection tokens)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from openrag.answer import Answer, AnswerOptions, Candidate, OpenRAG, prompts
from openrag.answer.engine import RowResult
from openrag.errors import InputError
from openrag.answer.scoring import candidate_score, choose, postprocess, score_terms
from openrag.tasks import MULTIHOP_INSTRUCTION, format_choices, get_task

from .conftest import make_tiny_llama_for

QUESTION = "Which city is the capital of France?"
PASSAGES = [{"title": "Paris", "text": "Paris is the capital and largest city of France."},
            {"title": "Lyon", "text": "Lyon is a city in France, on the Rhone."},
            {"title": "Berlin", "text": "Berlin is the capital of Germany."}]


@pytest.fixture(scope="module")
def rag(tiny_pair):
    return OpenRAG(*tiny_pair, AnswerOptions(max_new_tokens=6))


def hf_generate(rag, text: str, max_new_tokens: int):
    """The reference: Hugging Face greedy generation of one row, with per-step log-softmax."""
    ids = rag.tokenizer(text, return_tensors="pt").input_ids
    out = rag.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=rag.tokenizer.eos_token_id,
                             pad_token_id=rag.tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    return tokens, [torch.log_softmax(s[0].float(), -1) for s in out.scores]


def hf_text(rag, tokens):
    if tokens and tokens[-1] == rag.tokenizer.eos_token_id:
        tokens = tokens[:-1]
    return postprocess(rag.tokenizer.decode(tokens, skip_special_tokens=True), [rag.tokenizer.eos_token])


# -- scoring from hand-made probabilities ---------------------------------------------------------------

def row(token_probs, relevance=None, groundedness=None, utility=None):
    """A RowResult whose log-probs are the logs of hand-written probabilities."""
    log = lambda ps: [math.log(p) for p in ps]  # noqa: E731
    r = RowResult(tokens=list(range(len(token_probs))), logprobs=log(token_probs), stopped=True)
    if relevance:
        r.first["relevance"] = log(relevance)
    if groundedness:
        r.on_use["groundedness"] = (1, log(groundedness))
    if utility:
        r.on_use["utility"] = (2, log(utility))
    return r


def test_score_terms_match_hand_computation():
    # P([Relevant]) = 0.3, P([Irrelevant]) = 0.1 (the rest of the vocabulary holds 0.6)  ->  0.3 / 0.4 = 0.75
    # support: full 0.2, partial 0.1, none 0.1  ->  (0.2 + 0.5 * 0.1) / 0.4 = 0.625
    # utility: 0.05, 0.05, 0.1, 0.1, 0.2 (sum 0.5)  ->  (-0.05 - 0.025 + 0 + 0.05 + 0.2) / 0.5 = 0.35
    # tokens: 0.5, 0.8, 0.2 (EOS)  ->  exp(mean log) = (0.08) ** (1/3)
    r = row([0.5, 0.8, 0.2], relevance=[0.3, 0.1], groundedness=[0.2, 0.1, 0.1], utility=[0.05, 0.05, 0.1, 0.1, 0.2])
    terms = score_terms(r)
    assert terms["relevance"] == pytest.approx(0.75)
    assert terms["groundedness"] == pytest.approx(0.625)
    assert terms["utility"] == pytest.approx(0.35)
    assert terms["seq_score"] == pytest.approx(0.08 ** (1 / 3))
    opts = AnswerOptions(w_rel=1.0, w_sup=1.0, w_use=0.5, use_groundness=True, use_utility=True)  # the paper's score
    assert candidate_score(terms, opts) == pytest.approx(0.08 ** (1 / 3) + 0.75 + 0.625 + 0.5 * 0.35)
    assert candidate_score(terms, AnswerOptions()) == pytest.approx(0.08 ** (1 / 3))  # the default: the answer's confidence
    off = AnswerOptions(use_seqscore=False, use_groundness=False, use_utility=False, w_rel=2.0)
    assert candidate_score(terms, off) == pytest.approx(1.5)


def test_terms_whose_tokens_never_appear_are_zero():
    terms = score_terms(row([0.9, 0.9], relevance=[0.2, 0.2]))
    assert terms["groundedness"] == 0.0 and terms["utility"] == 0.0
    assert terms["relevance"] == pytest.approx(0.5)
    assert terms["seq_score"] == pytest.approx(0.9)


def test_tiny_probabilities_do_not_underflow():
    r = row([0.5], relevance=[1e-300, 3e-300])
    assert score_terms(r)["relevance"] == pytest.approx(0.25)


def candidate(text, score):
    return Candidate(passage={"title": "", "text": ""}, text=text, score=score, relevance=0, groundedness=0, utility=0, seq_score=0)


def test_choose_open_and_closed():
    cands = [candidate("B", 1.0), candidate("A", 0.6), candidate("A", 0.6), candidate("C", 1.0)]
    assert choose(cands, closed=False) == "B"  # best single score; ties go to the earlier
    assert choose(cands, closed=True) == "A"  # 1.2 summed beats 1.0


def test_postprocess():
    assert postprocess("[Relevant]Paris[Fully supported][Utility:5]</s>") == "Paris"
    assert postprocess("#Paris\n") == "Paris"
    assert postprocess(": yes<|im_end|>", ["<|im_end|>"]) == "yes"
    assert postprocess("#") == "#"


# -- prompts ---------------------------------------------------------------------------------------------

def test_prompt_formats():
    released = ("You are a question answering agent. Given a context and a question, your task is to answer the question based on "
                "the context. Instead of a full sentence, your answer must be the shortest word or phrase or named entity. "
                "Some example outputs 'answer' are: yes; no; Ibn Sina; Doha, Qatar; 2,132 seats, Los Angeles, California etc.")
    assert prompts.question_prompt("hotpotqa", "Q?") == released + "### Instruction:\nQ?\n\n### Response:\n"
    assert prompts.question_prompt("popqa", "Q?") == "### Instruction:\nQ?\n\n### Response:\n"
    assert prompts.question_prompt("pubhealth", "S.") == ("### Instruction:\nIs the following statement correct or not? Say true "
                                                         "if it's correct; otherwise say false.\n\n## Input:\n\nS.\n\n### Response:\n")
    arc = prompts.question_prompt("arc_c", "Q?", {"label": ["1", "2", "3"], "text": ["x", "y", "z"]})
    assert arc.endswith("### Input:\nQ?\nA: x\nB: y\nC: z\nD: \n\n### Response:\n")
    assert format_choices(["a", "b", "c", "d", "e"]).endswith("\nD: d\nE: e")
    assert prompts.evidence_content("musique", "T", "body") == "body"
    assert prompts.question_prompt("hotpotqa", "Q?", prompt_format="training") == "### Instruction:\nQ?\n\n### Response:\n"
    assert prompts.evidence_content("musique", "T", "body", "training") == "T\nbody"
    assert prompts.evidence_content("musique", "", "body", "training") == "body"
    assert prompts.question_prompt("pubhealth", "S.", prompt_format="training") == prompts.question_prompt("pubhealth", "S.")
    with pytest.raises(ValueError, match="prompt format"):
        prompts.question_prompt("hotpotqa", "Q?", prompt_format="mine")
    assert prompts.evidence_content("triviaqa", "T", "body") == "T\nbody"
    assert prompts.evidence_suffix("x") == "[Retrieval]<paragraph>x</paragraph>"
    with pytest.raises(ValueError, match="unknown task"):
        prompts.question_prompt("nope", "Q?")
    with pytest.raises(ValueError, match="choices"):
        prompts.question_prompt("arc_c", "Q?")


def test_choices_are_checked_once_for_every_task():
    """tasks.Task.check_choices: a choice task needs 1 to 5 choices, any other takes none; never a silent drop."""
    with pytest.raises(InputError, match=r"choices: at most 5 answer choices \(A-E\), got 6; drop the extra ones"):
        prompts.question_prompt("arc_c", "Q?", list("abcdef"))
    with pytest.raises(InputError, match=r"choices: at most 5"):
        format_choices(list("abcdef"))
    for task in ("hotpotqa", "popqa", "pubhealth"):
        with pytest.raises(InputError, match=rf"task {task} takes no answer choices; drop choices, or ask with a "
                                             r"multiple-choice task \(arc_c\)"):
            prompts.question_prompt(task, "Q?", ["a", "b"])
    with pytest.raises(InputError, match=r"task arc_c needs the answer choices; give choices: a list of 1 to 5"):
        get_task("arc_c").check_choices(None)
    with pytest.raises(InputError, match=r"choices: the labels must be distinct letters A-E \(or 1-4\), got \['1', '5'\]"):
        format_choices({"label": ["1", "5"], "text": ["x", "y"]})  # "5" was dropped without a word
    with pytest.raises(InputError, match=r"choices: 2 labels for 3 texts"):
        format_choices({"label": ["A", "B"], "text": ["x", "y", "z"]})
    assert format_choices(list("abcde")) == "\nA: a\nB: b\nC: c\nD: d\nE: e"


def test_answer_refuses_choices_the_task_does_not_take_before_any_work(tiny_pair):
    class Retriever:
        searched = 0

        def search(self, queries, top_k):
            Retriever.searched += 1
            return [[] for _ in queries]

    rag = OpenRAG(*tiny_pair, AnswerOptions(max_new_tokens=2), retriever=Retriever())
    with pytest.raises(InputError, match="task multihop takes no answer choices"):
        rag.answer(QUESTION, choices=["Paris", "Lyon"])
    with pytest.raises(InputError, match=r"question 2 of 2: choices: at most 5 answer choices \(A-E\), got 6"):
        rag.answer_batch([QUESTION, QUESTION], None, [list("abcd"), list("abcdef")], task="arc_c")
    assert Retriever.searched == 0


# -- modes and rules -------------------------------------------------------------------------------------

def test_no_retrieval_is_the_forced_answer(rag):
    a = rag.answer(QUESTION, PASSAGES, mode="no_retrieval")
    tokens, _ = hf_generate(rag, prompts.question_prompt("multihop", QUESTION) + "[No Retrieval]", 6)
    assert not a.retrieved and a.candidates == [] and a.retrieval_rule is None
    assert a.text == a.no_retrieval_text == hf_text(rag, tokens)


def test_always_retrieve_scores_each_passage(rag):
    a = rag.answer(QUESTION, PASSAGES, mode="always_retrieve", ndocs=2)
    assert a.retrieved and len(a.candidates) == 2
    for c, p in zip(a.candidates, PASSAGES):
        text = prompts.question_prompt("multihop", QUESTION) + prompts.evidence_suffix(p["text"])
        tokens, logp = hf_generate(rag, text, 6)
        assert c.passage == p and c.text == hf_text(rag, tokens)
        seq = math.exp(sum(logp[t][tok].item() for t, tok in enumerate(tokens)) / len(tokens))
        assert c.seq_score == pytest.approx(seq, rel=1e-4)
        rel_ids = rag.tokenizer.convert_tokens_to_ids(["[Relevant]", "[Irrelevant]"])
        p_rel, p_irr = logp[0][rel_ids].exp().tolist()
        assert c.relevance == pytest.approx(p_rel / (p_rel + p_irr), rel=1e-4)
    assert a.text == max(a.candidates, key=lambda c: c.score).text


def test_token_rule_at_the_threshold_edge(rag):
    ids = rag.tokenizer(prompts.question_prompt("multihop", QUESTION), return_tensors="pt").input_ids
    probs = torch.softmax(rag.model(ids).logits[0, -1].float(), -1)
    ret, no = probs[rag.tokenizer.convert_tokens_to_ids(["[Retrieval]", "[No Retrieval]"])].tolist()
    p = rag.answer(QUESTION, PASSAGES, threshold=0.5).retrieval_value
    assert p == pytest.approx(ret / (ret + no), rel=1e-4)

    at = rag.answer(QUESTION, PASSAGES, threshold=p)  # retrieve only when p > threshold
    assert not at.retrieved and at.candidates == [] and at.threshold == p
    below = rag.answer(QUESTION, PASSAGES, threshold=math.nextafter(p, -math.inf))
    assert below.retrieved and len(below.candidates) == 3
    assert below.retrieval_rule == "token" and below.retrieval_value == p
    assert not rag.answer(QUESTION, PASSAGES, threshold=1.0).retrieved
    assert rag.answer(QUESTION, PASSAGES, threshold=0.0).retrieved


@pytest.mark.parametrize("rule", ["minp", "meanp"])
def test_confidence_rules_at_the_threshold_edge(rag, rule):
    tokens, logp = hf_generate(rag, prompts.question_prompt("multihop", QUESTION) + "[No Retrieval]", 6)
    token_probs = [logp[t][tok].exp().item() for t, tok in enumerate(tokens)]
    expected = min(token_probs) if rule == "minp" else sum(token_probs) / len(token_probs)
    f = rag.answer(QUESTION, PASSAGES, retrieval_rule=rule, threshold=0.5).retrieval_value
    assert f == pytest.approx(expected, rel=1e-4)

    at = rag.answer(QUESTION, PASSAGES, retrieval_rule=rule, threshold=f)  # retrieve only when f < threshold
    assert not at.retrieved and at.candidates == []
    assert at.text == at.no_retrieval_text == hf_text(rag, tokens)  # the forced answer is the final one
    above = rag.answer(QUESTION, PASSAGES, retrieval_rule=rule, threshold=math.nextafter(f, math.inf))
    assert above.retrieved and len(above.candidates) == 3 and above.no_retrieval_text == at.text
    assert above.retrieval_rule == rule and above.retrieval_value == f
    assert not rag.answer(QUESTION, PASSAGES, retrieval_rule=rule, threshold=0.0).retrieved


def test_no_passages_answers_without_retrieval_and_says_so(rag):
    for mode in ("always_retrieve", "adaptive_retrieval"):
        a = rag.answer(QUESTION, None, mode=mode, threshold=0.0)
        assert not a.retrieved and a.candidates == []
        assert any("no passages" in n for n in a.notes)


def test_long_passage_is_cut_with_a_note(rag):
    long = {"title": "Long", "text": " ".join(f"word{i}" for i in range(3000))}
    a = rag.answer(QUESTION, [long, PASSAGES[0]], mode="always_retrieve")
    assert a.retrieved and len(a.candidates) == 2
    cut = a.candidates[0].passage["text"]
    assert long["text"].startswith(cut[:100]) and len(cut) < len(long["text"])
    assert any("cut from" in n and "context window of 512" in n for n in a.notes)
    text = prompts.question_prompt("multihop", QUESTION) + prompts.evidence_suffix(cut)
    assert len(rag.tokenizer(text).input_ids) + 6 <= 512


def test_max_passage_tokens_cuts_each_passage_and_the_chain_with_a_note(rag):
    """Issue 31: a bound on one row's work below the context window; the chain gets it once per passage it joins."""
    long = {"title": "Long", "text": " ".join(f"word{i}" for i in range(100))}  # within the context window
    ids = rag.tokenizer(long["text"], add_special_tokens=False).input_ids
    a = rag.answer(QUESTION, [long, PASSAGES[0]], mode="always_retrieve", max_passage_tokens=20, chain=True)
    assert [c.passage["text"] for c in a.candidates[:2]] == [rag.tokenizer.decode(ids[:20]), PASSAGES[0]["text"]]
    assert f"passage 1 (Long) cut from {len(ids)} to 20 tokens (max_passage_tokens)" in a.notes
    chain = a.candidates[2].passage
    assert chain["chained"] == 2 and len(rag.tokenizer(chain["text"], add_special_tokens=False).input_ids) <= 41
    assert any(n.startswith("the chain of 2 passages cut from ") and n.endswith(" to 40 tokens (max_passage_tokens)")
               for n in a.notes), a.notes
    whole = rag.answer(QUESTION, [long, PASSAGES[0]], mode="always_retrieve")  # by default only the context cuts
    assert whole.candidates[0].passage["text"] == long["text"] and not whole.notes


def test_answer_batch_equals_one_by_one(rag):
    questions = [QUESTION, "Who wrote Hamlet?", "Is Berlin in Germany?"]
    passages = [PASSAGES, PASSAGES[1:], []]
    for options in ({"mode": "always_retrieve", "batch_size": 5}, {"retrieval_rule": "meanp", "threshold": 0.3, "batch_size": 2}):
        together = rag.answer_batch(questions, passages, **options)  # 6 rows: some wait and join (refill)
        for q, ps, a in zip(questions, passages, together):
            alone = rag.answer(q, ps, **{k: v for k, v in options.items() if k != "batch_size"})
            assert a.text == alone.text and a.retrieved == alone.retrieved
            assert [c.score for c in a.candidates] == pytest.approx([c.score for c in alone.candidates], abs=1e-4)


def test_answer_object_is_json(rag):
    a = rag.answer(QUESTION, PASSAGES, threshold=0.0)
    data = json.loads(json.dumps(a.to_dict()))
    for key in ("text", "retrieved", "retrieval_rule", "retrieval_value", "threshold", "candidates", "notes", "timings"):
        assert key in data
    assert set(data["candidates"][0]) >= {"passage", "text", "score", "relevance", "groundedness", "utility", "seq_score"}
    assert set(data["candidates"][0]["passage"]) == {"title", "text"}
    assert data["timings"]["seconds"] > 0
    assert isinstance(a, Answer)


def test_bad_options_are_refused(rag):
    with pytest.raises(ValueError, match="mode"):
        rag.answer(QUESTION, mode="sometimes")
    with pytest.raises(ValueError, match="retrieval_rule"):
        AnswerOptions(retrieval_rule="maxp")
    with pytest.raises(ValueError, match="ndocs"):
        AnswerOptions(ndocs=0)
    with pytest.raises(ValueError, match="passage lists"):
        rag.answer_batch([QUESTION, QUESTION], [PASSAGES])


def test_model_without_reflection_tokens_is_refused(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    with pytest.raises(ValueError, match="reflection tokens"):
        OpenRAG(make_tiny_llama_for(tokenizer), tokenizer)


# -- the command ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tiny_pair, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_openrag")
    model, tokenizer = tiny_pair
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_ask_prints_json(tiny_folder, tmp_path, capsys):
    from openrag.cli import main

    path = tmp_path / "passages.json"
    path.write_text(json.dumps(PASSAGES))
    with pytest.raises(SystemExit) as done:
        main(["ask", QUESTION, "--passages", str(path), "--json", "--model_name", str(tiny_folder), "--device", "cpu",
              "--mode", "always_retrieve", "--max_new_tokens", "4", "--no-use_utility", "--w_rel", "2"])
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["retrieved"] and len(data["candidates"]) == 3 and data["candidates"][0]["passage"] == PASSAGES[0]


def test_ask_prints_answer_then_evidence(tiny_folder, tmp_path, capsys):
    from openrag.cli import main

    path = tmp_path / "passages.txt"
    path.write_text("Paris is the capital of France.\n\nLyon is a city in France.\n")
    with pytest.raises(SystemExit) as done:
        main(["ask", QUESTION, "--passages", str(path), "--model_name", str(tiny_folder), "--device", "cpu",
              "--threshold", "0", "--max_new_tokens", "4", "--chain"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "evidence" in out and "retrieved: token rule" in out
    assert out.index("retrieved: token rule") < out.index("evidence")
    assert "chain 1-2" in out


def answer_and_rows(rag, question, passages, **options):
    """The answer, and the texts of its evidence rows as the model was given them."""
    shown = []
    encode = rag._encode
    rag._encode = lambda text: shown.append(text) or encode(text)
    try:
        answer = rag.answer(question, passages, **options)
    finally:
        rag._encode = encode
    return answer, [t for t in shown if "<paragraph>" in t]


def test_training_format_is_what_data_build_trains_on(rag):
    """A row in the training format is, token for token, the start of the training text of a single-passage
    instance of `openrag data build` (prompt, [Retrieval], the passage)."""
    from openrag.data.build import instances_for
    from openrag.data.examples import QAExample
    from openrag.passage import Passage
    from openrag.data.tokenize import format_prompt

    gold = [Passage("Kiss and Tell", "Shirley Temple played Corliss Archer.", is_gold=True),
            Passage("Shirley Temple", "She was Chief of Protocol of the United States.", is_gold=True)]
    ex = QAExample("q1", "What position was held by the actress who played Corliss Archer?", ["Chief of Protocol"],
                   [*gold, Passage("Corliss Archer", "A radio programme.", is_gold=False)], False, "hotpotqa", "t:1")
    instance = next(i for i in instances_for(ex) if i.kind == "gold")
    trained = format_prompt(instance.input) + instance.output
    passage = next(p for p in gold if p.title in instance.passage)
    _, rows = answer_and_rows(rag, ex.question, [{"title": passage.title, "text": passage.text}], mode="always_retrieve",
                              prompt_format="training", task="hotpotqa")
    row = rows[0]
    assert trained.startswith(row)
    assert not row.startswith(MULTIHOP_INSTRUCTION)


def test_chain_candidate_is_what_data_build_trains_as_a_gold_chain(rag):
    """``chain``: one more candidate whose row is, token for token, the start of a gold_chain instance's
    training text (the chain of docs/method.md section 3), marked ``chained``; single-hop tasks get no chain."""
    from openrag.data.build import instances_for
    from openrag.data.examples import QAExample
    from openrag.passage import Passage
    from openrag.data.tokenize import format_prompt

    gold = [Passage("Kiss and Tell", "Shirley Temple played Corliss Archer.", is_gold=True),
            Passage("Shirley Temple", "She was Chief of Protocol of the United States.", is_gold=True)]
    ex = QAExample("q1", "What position was held by the actress who played Corliss Archer?", ["Chief of Protocol"],
                   gold, False, "hotpotqa", "t:1")
    instance = next(i for i in instances_for(ex) if i.kind == "gold_chain")
    assert instance.passage == ("Knowledge 1: Kiss and Tell\nShirley Temple played Corliss Archer. \n[SEP] \n"
                                "Knowledge 2: Shirley Temple\nShe was Chief of Protocol of the United States.")
    passages = [{"title": p.title, "text": p.text} for p in gold]
    a, rows = answer_and_rows(rag, ex.question, passages, mode="always_retrieve", prompt_format="training", task="hotpotqa", chain=True)
    assert [c.passage.get("chained") for c in a.candidates] == [None, None, 2]
    assert a.candidates[2].passage["text"] == instance.passage
    assert len(rows) == 3 and (format_prompt(instance.input) + instance.output).startswith(rows[2])
    single = rag.answer("Who wrote Hamlet?", passages, mode="always_retrieve", task="popqa", chain=True)
    assert len(single.candidates) == 2


def test_the_models_recorded_format_is_the_default(rag):
    """The loader's prompt_format reaches the pipeline as a value (OpenRAG(prompt_format=...)), not through
    the model's config."""
    trained = OpenRAG(rag.model, rag.tokenizer, prompt_format="training")
    assert trained.model_prompt_format == "training" and rag.model_prompt_format == "released"
    assert not hasattr(rag.model.config, "openrag_prompt_format")
    shown = []
    encode = trained._encode
    trained._encode = lambda text: shown.append(text) or encode(text)
    trained.answer("Q?", [{"title": "T", "text": "body"}], mode="always_retrieve", task="hotpotqa")
    assert any(t.endswith("### Instruction:\nQ?\n\n### Response:\n[Retrieval]<paragraph>T\nbody</paragraph>") for t in shown)
    shown.clear()
    trained.answer("Q?", [{"title": "T", "text": "body"}], mode="always_retrieve", task="hotpotqa", prompt_format="released")
    assert any(t.startswith(MULTIHOP_INSTRUCTION) and t.endswith("[Retrieval]<paragraph>body</paragraph>") for t in shown)
