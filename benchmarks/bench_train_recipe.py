"""Training speed of the bundled recipe before and after the CPU changes (issue 13), on real instances.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    python benchmarks/bench_train_recipe.py --data runs/v3/train.jsonl [--batch 16 --batches 3 --output FILE.json]

(Under glibc's malloc the two models and varying batch shapes grew past 24 GB of RSS after two batches.)

Model: the bundled SmolLM2-135M-Instruct, float32 on the CPU, set up by ``openrag train``'s own code: experts
8 x top-2, adapter_dim 32, LoRA r 16 on q,k,v,o,gate,up,down, the new token rows trainable. A step is the
trainer's: forward, ``target_loss`` (logits only at the trained positions), backward, fused AdamW.

Inputs: ``--batches`` random batches of ``--batch`` real instances from an ``openrag data build`` file,
tokenised with ``--max_length``, the same batches for every variant. Variants, interleaved batch by batch after
one warm-up step each:

* before: dropout 0.1 on the LoRA and expert inputs, batches right-padded (``Collator``), as the recipe was,
  once with random batches and once with the same instances regrouped by length (what ``group_by_length``,
  the recipe's sampler, approximates: a megabatch sorted by length, then cut into batches);
* padded, no dropout: the same batches with dropout 0;
* after: dropout 0 and the batch packed into rows of ``--max_length`` (``PackingCollator``).

tokens/s counts real tokens (no padding), the same count in every variant; the ratios are after / each
"before". A step here is forward, loss, backward and the optimizer step; the Trainer's gradient clipping and
expert-load meter, the same in every variant, are left out. Dropout 0 models are built as the trainer builds
them (PEFT puts Identity where dropout is 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import run_conditions, train_step  # noqa: E402

from openrag.data.tokenize import load_training_instances  # noqa: E402
from openrag.training.args import ModelArguments, MoEArguments  # noqa: E402
from openrag.training.data import Collator, PackingCollator, tokenize_instances  # noqa: E402
from openrag.training.setup import build_model  # noqa: E402

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def build_recipe(dropout: float = 0.0, bf16: bool = False):
    """The bundled recipe's model as ``openrag train`` builds it (experts 8 x top-2, adapter_dim 32, LoRA r 16 on
    ``LORA_TARGETS``, ``dropout`` on both), in train mode, and its fused AdamW: (setup, model, optimizer)."""
    setup = build_model(ModelArguments("smollm2", lora_r=16, lora_alpha=16, lora_dropout=dropout, lora_target_modules=LORA_TARGETS),
                        MoEArguments(8, 2, 32, 0.25, dropout), bf16=bf16)
    model = setup.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0, fused=True)
    return setup, model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an `openrag data build` JSON-lines file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=320)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()

    models = {}  # dropout -> (model, optimizer), each built as `openrag train` builds it (dropout 0: PEFT's Identity)
    for p in (0.1, 0.0):
        setup, model, optimizer = build_recipe(dropout=p)
        models[p] = model, optimizer
    instances = load_training_instances(args.data)
    random.Random(0).shuffle(instances)
    dataset = tokenize_instances(setup.tokenizer, instances[: args.batch * (args.batches + 1)], args.max_length)
    features = [dataset[i] for i in range(len(dataset))]
    batches = [features[i * args.batch : (i + 1) * args.batch] for i in range(args.batches + 1)]  # batch 0 warms up
    timed = sorted((f for b in batches[1:] for f in b), key=lambda f: len(f["input_ids"]))
    grouped = [batches[0]] + [timed[i * args.batch : (i + 1) * args.batch] for i in range(args.batches)]

    pad = setup.tokenizer.pad_token_id
    variants = {  # name: (dropout, collator, batches)
        "before: dropout 0.1, padded": (0.1, Collator(pad), batches),
        "before: dropout 0.1, padded, grouped by length": (0.1, Collator(pad), grouped),
        "padded, no dropout": (0.0, Collator(pad), batches),
        "after: no dropout, packed": (0.0, PackingCollator(pad, args.max_length), batches),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    shapes: dict[str, list[list[int]]] = {name: [] for name in variants}
    for i in range(len(batches)):
        for name, (p, collate, source) in variants.items():
            batch = collate(source[i])
            batch.pop("token_mask", None)  # the trainer's meter reads it; the model never sees it
            elapsed = train_step(*models[p], batch)
            if i:
                times[name].append(elapsed)
                shapes[name].append(list(batch["input_ids"].shape))
            print(f"batch {i} {name}: {list(batch['input_ids'].shape)} {elapsed:.2f} s", flush=True)

    real_tokens = [sum(len(f["input_ids"]) for f in b) for b in batches[1:]]
    results = {
        **run_conditions(load_before),
        "data": args.data,
        "batch": args.batch,
        "real_tokens_per_batch": real_tokens,
        "variants": {
            name: {"shapes": shapes[name], "steps_s": t, "real_tokens_per_s": sum(real_tokens) / sum(t)} for name, t in times.items()
        },
    }
    rate = {k: v["real_tokens_per_s"] for k, v in results["variants"].items()}
    after = rate["after: no dropout, packed"]
    results["speedup_after_over"] = {k: after / v for k, v in rate.items() if k.startswith("before")}
    print(json.dumps(results, indent=2))
    for name, ratio in results["speedup_after_over"].items():
        print(f"real tokens/s: after {after:.0f} against {name} {rate[name]:.0f}: {ratio:.2f}x")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
