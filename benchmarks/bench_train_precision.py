"""Training speed in float32 and under bf16 autocast, on the same packed batches, with the machine's peaks.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    python benchmarks/bench_train_precision.py --data TRAIN.jsonl [--batch 16 --batches 4 --output FILE.json]

Model: the bundled SmolLM2-135M-Instruct set up by ``openrag train``'s own code (``build_model``) with the
bundled recipe's adapters: experts 8 x top-2, adapter_dim 32, LoRA r 16 on q,k,v,o,gate,up,down, dropout 0,
the new token rows trainable. A step is the trainer's: forward, ``target_loss``, backward, fused AdamW.
Variants, interleaved batch by batch after one warm-up step each, on the same batches of ``--batch`` real
instances packed into rows of ``--max_length`` (``PackingCollator``):

* float32: everything float32, no autocast (``openrag train`` on a CPU without native bf16);
* bf16 autocast, float32 base: the same float32 model under ``torch.autocast("cpu", torch.bfloat16)``;
* bf16 autocast, bf16 base: the model as ``build_model(bf16=True)`` makes it (frozen base weights stored in
  bf16, trainable weights float32) under the same autocast: what ``openrag train --bf16 True`` runs.

Peaks: the GFLOP/s of a float32 and a bf16 product of the shape of the model's MLP projection on a packed
batch (2048 x 576 x 1536), best of 5, on the same threads. Model FLOPs utilisation (MFU) counts only the
linear layers of the transformer blocks: forward 2 x params x tokens, backward 2 x params x tokens (the
input gradient; the frozen base has no weight gradient), over padded positions too (packed rows pad only
their tail); experts, LoRA, attention scores and the vocabulary projection are left out, so MFU is a lower
bound. tokens/s counts real tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import run_conditions, train_step  # noqa: E402
from bench_train_recipe import LORA_TARGETS, build_recipe  # noqa: E402

from openrag.data.tokenize import load_training_instances  # noqa: E402
from openrag.precision import bf16_matmul_speedup, cpu_bf16, native_bf16_flags  # noqa: E402
from openrag.training.data import PackingCollator, tokenize_instances  # noqa: E402

PEAK_SHAPE = (2048, 576, 1536)  # tokens x hidden -> MLP width


def matmul_gflops(dtype: torch.dtype, shape=PEAK_SHAPE, repeats: int = 5) -> float:
    m, k, n = shape
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * m * k * n / best / 1e9


def block_linear_params(model) -> int:
    """Weights of the frozen linear layers inside the transformer blocks (q, k, v, o, gate, up, down)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = LORA_TARGETS.split(",")
    return sum(m.weight.numel() for name, m in inner.model.layers.named_modules()
               if isinstance(m, torch.nn.Linear) and name.removesuffix(".base_layer").rsplit(".", 1)[-1] in targets and "lora_" not in name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an `openrag data build` JSON-lines file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=320)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()
    peaks = {"float32": matmul_gflops(torch.float32), "bfloat16": matmul_gflops(torch.bfloat16)}

    setup, fp32_model, fp32_opt = build_recipe(bf16=False)
    _, bf16_model, bf16_opt = build_recipe(bf16=True)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    variants = {  # name: (model, optimizer, context, dtype of its matrix products)
        "float32": (fp32_model, fp32_opt, contextlib.nullcontext, "float32"),
        "bf16 autocast, float32 base": (fp32_model, fp32_opt, autocast, "bfloat16"),
        "bf16 autocast, bf16 base": (bf16_model, bf16_opt, autocast, "bfloat16"),
    }
    instances = load_training_instances(args.data)
    random.Random(0).shuffle(instances)
    dataset = tokenize_instances(setup.tokenizer, instances[: args.batch * (args.batches + 1)], args.max_length)
    features = [dataset[i] for i in range(len(dataset))]
    collate = PackingCollator(setup.tokenizer.pad_token_id, args.max_length)
    batches = [collate(features[i * args.batch : (i + 1) * args.batch]) for i in range(args.batches + 1)]  # batch 0 warms up
    for batch in batches:
        batch.pop("token_mask", None)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for i, batch in enumerate(batches):
        for name, (model, optimizer, context, _) in variants.items():
            with context():
                elapsed = train_step(model, optimizer, batch)
            if i:
                times[name].append(elapsed)
            print(f"batch {i} {name}: {list(batch['input_ids'].shape)} {elapsed:.2f} s", flush=True)

    real_tokens = [sum(len(f["input_ids"]) for f in features[i * args.batch : (i + 1) * args.batch]) for i in range(1, args.batches + 1)]
    positions = [int(b["input_ids"].numel()) for b in batches[1:]]
    linear = block_linear_params(fp32_model)
    results = {
        **run_conditions(load_before),
        "bf16_flags": native_bf16_flags(),
        "openrag_choice": {"bf16": cpu_bf16().fast, "why": cpu_bf16().why},
        "probe_bf16_speedup": round(bf16_matmul_speedup(), 2),
        "data": args.data,
        "batch": args.batch,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "block_linear_params": linear,
        "variants": {},
    }
    for name, (_, _, _, dtype) in variants.items():
        t = times[name]
        flops = 4 * linear * sum(positions)  # forward + input gradient of the frozen block linears
        results["variants"][name] = {
            "steps_s": [round(x, 3) for x in t],
            "median_step_s": round(statistics.median(t), 3),
            "real_tokens_per_s": round(sum(real_tokens) / sum(t), 1),
            "linear_gflops": round(flops / sum(t) / 1e9, 1),
            "mfu_linear": round(flops / sum(t) / 1e9 / peaks[dtype], 3),
        }
    rate = {k: v["real_tokens_per_s"] for k, v in results["variants"].items()}
    results["speedup_over_float32"] = {k: round(v / rate["float32"], 2) for k, v in rate.items() if k != "float32"}
    print(json.dumps(results, indent=2))
    for name, ratio in results["speedup_over_float32"].items():
        print(f"real tokens/s: {name} {rate[name]:.0f} against float32 {rate['float32']:.0f}: {ratio:.2f}x")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
