"""Where a model's relevance judgement stands: its [Relevant] token against a linear probe of its hidden state.

    python scripts/probe_relevance.py runs/v3/train.jsonl smollm2 runs/abl_base_both/ckpt default [--words]

On gold and distractor instances of a built training file (HotpotQA and 2Wiki; the instances a model trained
on, never evaluation rows), each model reads the instance up to its relevance token. Printed per model:
* token AUC: P([Relevant]) share against the gold flag (0.5: no skill);
* probe AUC: a logistic regression on the last hidden state at that position, fitted on 70% of the questions
  and scored on the rest (split by question, so a question's gold and distractor stay on one side): how much
  of the judgement the model's representation holds, whether or not its token reads it out.
A bare base gets the 15 reflection tokens at the mean row; with ``--words`` each new token's rows are the mean
of its words' rows instead (``[Relevant]`` from "Relevant": openrag.model.reflection's token names without
brackets, ``</paragraph>`` as "end of paragraph"), to ask whether the base starts with any sense of relevance.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from openrag import add_reflection_tokens, load_model
from openrag.data.examples import RowError
from openrag.data.readers import iter_json_rows
from openrag.data.tokenize import tokenize_instance
from openrag.eval.critique import auc
from openrag.model.reflection import IRRELEVANT, RELEVANT, reflection_token_ids

DATASETS = ("hotpotqa", "2wikimultihopqa")
MAX_LENGTH = 320  # scripts/train_bundled.sh's --model_max_length


def read_rows(path: str) -> list[dict]:
    """The builder's gold and distractor rows of the probed datasets; a clear exit on a missing or malformed file."""
    rows = []
    try:
        for _, row in iter_json_rows(path):
            if isinstance(row, RowError):
                raise row
            turns = row.get("conversation")
            if not (isinstance(turns, list) and turns and isinstance(turns[0], dict) and {"input", "output"} <= turns[0].keys()):
                raise ValueError(f"{path}: a row without conversation[0].input/output; give a file from `openrag data build`")
            if row.get("kind") in ("gold", "distractor") and row.get("dataset") in DATASETS:
                rows.append(row)
    except (OSError, ValueError) as err:
        sys.exit(f"probe_relevance: {err}")
    if not rows:
        sys.exit(f"probe_relevance: {path} holds no HotpotQA or 2Wiki gold/distractor instances; give a file from `openrag data build`")
    return rows


@torch.no_grad()
def word_rows(model, tokenizer) -> None:
    """Set each reflection token's input (and untied output) row to the mean of its words' rows."""
    for weight in {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
        for token, new in reflection_token_ids(tokenizer).items():
            words = token.strip("[]<>")
            words = f"end of {words[1:]}" if words.startswith("/") else words
            weight[new] = weight[tokenizer(words, add_special_tokens=False).input_ids].mean(0)


def probe_auc(features: torch.Tensor, labels: torch.Tensor, questions: list[str]) -> float:
    """AUC on held-out questions of an L2-regularised logistic regression on standardised ``features`` [N, D]."""
    names = sorted(set(questions))
    random.Random(1).shuffle(names)
    fit_names = set(names[: int(0.7 * len(names))])
    fit = torch.tensor([q in fit_names for q in questions])  # [N]
    mean, std = features[fit].mean(0), features[fit].std(0) + 1e-6
    z = (features - mean) / std  # [N, D]
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z[fit] @ w + b, labels[fit]) + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return auc((z[~fit] @ w + b).detach().tolist(), (labels[~fit] == 1).tolist())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a training file from `openrag data build`")
    ap.add_argument("models", nargs="+", help="model names or checkpoint folders")
    ap.add_argument("--instances", type=int, default=400, help="how many gold/distractor instances (a seeded draw)")
    ap.add_argument("--words", action="store_true", help="a bare base's new token rows from their words, not the mean")
    args = ap.parse_args(argv)
    rows = read_rows(args.data)
    random.Random(0).shuffle(rows)
    rows = rows[: args.instances]
    for name in args.models:
        try:
            model, tokenizer = load_model(name, dtype=torch.float32)  # MODEL.md's figures are float32, on any CPU
        except (OSError, ValueError) as err:
            sys.exit(f"probe_relevance: cannot load {name}: {err}")
        words = bool(add_reflection_tokens(model, tokenizer)) and args.words  # a bare base: it had no reflection tokens
        if words:
            word_rows(model, tokenizer)
        ids = reflection_token_ids(tokenizer)
        pair = [ids[RELEVANT], ids[IRRELEVANT]]
        features, shares, labels = [], [], []
        for r in rows:  # the builder's rows: one turn, {input, output}
            turn = r["conversation"][0]
            t = tokenize_instance(tokenizer, turn["input"], turn["output"], MAX_LENGTH, r.get("train_decision", True))
            at = next(k for k, label in enumerate(t.labels) if label in pair)  # the relevance token's position
            with torch.no_grad():
                out = model(torch.tensor([t.input_ids[:at]]), output_hidden_states=True)
            features.append(out.hidden_states[-1][0, -1].float())  # [D]
            shares.append(torch.softmax(out.logits[0, -1, pair].float(), 0)[0])
            labels.append(float(t.labels[at] == ids[RELEVANT]))
        features, shares, labels = torch.stack(features), torch.stack(shares), torch.tensor(labels)
        questions = [r["conversation"][0]["input"] for r in rows]
        print(f"{name}{' (word rows)' if words else ''}: {len(labels)} instances ({int(labels.sum())} gold); "
              f"token AUC {auc(shares.tolist(), (labels == 1).tolist()):.3f}, P([Relevant]) {shares.min():.2f}-{shares.max():.2f}; "
              f"probe AUC {probe_auc(features, labels, questions):.3f}", flush=True)


if __name__ == "__main__":
    main()
