"""Training throughput of the bundled base (issue: openrag train and openrag merge).

    python benchmarks/bench_train.py [--seq 512 --batch 1 --rounds 2 --adapter_dim 512 --output FILE.json]

Model: the bundled SmolLM2-135M-Instruct, float32 on the CPU, set up by ``openrag train``'s own code
(``build_model``: reflection tokens, experts, LoRA, new token rows trainable). A training step is what
the trainer does: forward, ``target_loss`` (cross-entropy on the trained tokens, logits only there),
backward, fused AdamW step (the Trainer's default optimiser). Three variants, in this one process, on the same inputs, interleaved round by round
(after a short warm-up step each; the median step time is reported):

* experts: 8 experts, top-2, released adapter_dim 512, no LoRA (``--lora_r 0``), openrag's MoEAdapter
  (token-expert pairs grouped by expert, two batched matmuls);
* experts, per-expert loop: the same model and weights with the MoEAdapter swapped for a variant that
  loops over experts with index_select / index_add (the usual reference implementation of the same math);
* LoRA only: no experts (``--num_experts 0``), LoRA r=64, alpha 16 on q,k,v,o,gate,up,down (the
  released targets; embed_tokens/lm_head are tied in SmolLM2, so they take no LoRA).

Inputs: random ids [batch, seq] with labels on the last quarter of each row (answer plus reflection
tokens; prompt and passages are masked in real data). tokens/s counts all batch x seq positions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from openrag.model.experts import MoEAdapter, moe_adapters, route
from openrag.training.args import ModelArguments, MoEArguments
from openrag.training.setup import build_model, trainable_summary
from openrag.training.trainer import target_loss


class LoopMoEAdapter(MoEAdapter):
    """The same math as MoEAdapter, one expert at a time over the tokens that chose it."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), self.dropout(y).reshape(-1, y.shape[-1])  # [N, D]
        logits, top_idx, top_w = route(flat_x, self.router.weight, cfg.topk)  # [N, E], [N, k], [N, k]
        self.last_router_logits = logits.view(*x.shape[:-1], -1)
        self.last_routing = torch.zeros_like(logits).scatter(-1, top_idx, top_w).detach().view_as(self.last_router_logits)
        out = torch.zeros_like(flat_y)  # [N, D]
        for j, expert in enumerate(self.experts.values()):
            rows, slot = (top_idx == j).nonzero(as_tuple=True)  # tokens that chose expert j, and in which of their k slots
            if rows.numel() == 0:
                continue
            h = expert.adapter_up(F.gelu(expert.adapter_down(flat_y.index_select(0, rows))))  # [n_j, D]
            out = out.index_add(0, rows, h * top_w[rows, slot].unsqueeze(-1))
        return (cfg.moe_scaling * out).to(y.dtype).view_as(y)


def use_adapter_class(model, cls) -> None:
    for adapter in moe_adapters(model):
        adapter.__class__ = cls


def make_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -seq // 4 :] = ids[:, -seq // 4 :]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss_sum, n, _ = target_loss(model, batch)
    (loss_sum / n).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def run_conditions(load_before: tuple[float, float, float]) -> dict:
    """When, on what and under what load a training bench ran (``load_before``: ``os.getloadavg()`` at its start)."""
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="timed steps per variant (after one short warm-up step each)")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--adapter_dim", type=int, default=512)
    parser.add_argument("--lora_r", type=int, default=64)
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()

    experts = build_model(ModelArguments("smollm2", lora_r=0), MoEArguments(args.experts, args.topk, args.adapter_dim))
    lora = build_model(ModelArguments("smollm2", lora_r=args.lora_r), MoEArguments(num_experts=0))
    batch = make_batch(len(experts.tokenizer), args.batch, args.seq)

    model = experts.model.eval()  # same math check, without dropout, with adapter_up away from its zero start
    with torch.no_grad():
        for adapter in moe_adapters(model):
            for expert in adapter.experts.values():
                expert.adapter_up.weight.normal_(0.0, 0.02)
        probe = {k: v[:, :64] for k, v in batch.items() if k != "labels"}
        reference = model(**probe).logits
        use_adapter_class(model, LoopMoEAdapter)
        looped = model(**probe).logits
        use_adapter_class(model, MoEAdapter)
    max_diff = (reference - looped).abs().max().item()
    assert max_diff < 1e-4, f"the per-expert loop disagrees with MoEAdapter by {max_diff}"

    variants = {
        "experts (openrag MoEAdapter)": (experts.model, MoEAdapter),
        "experts (per-expert loop)": (experts.model, LoopMoEAdapter),
        "LoRA only": (lora.model, None),
    }
    optimizers = {
        id(m): torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0, fused=True)
        for m in (experts.model, lora.model)
    }
    warm = {k: v[:, -64:] for k, v in batch.items()}  # a short warm-up step: allocator, optimizer state
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (model, cls) in variants.items():
            if cls is not None:
                use_adapter_class(model, cls)
            model.train()
            elapsed = train_step(model, optimizers[id(model)], batch if round_ else warm)
            if round_:
                times[name].append(elapsed)
            print(f"round {round_} {name}: {elapsed:.2f} s", flush=True)

    tokens = args.batch * args.seq
    results = {
        **run_conditions(load_before),
        "seq": args.seq,
        "batch": args.batch,
        "rounds": args.rounds,
        "experts": {"num_experts": args.experts, "topk": args.topk, "adapter_dim": args.adapter_dim},
        "lora_r": args.lora_r,
        "loop_vs_moeadapter_max_abs_logit_diff": max_diff,
        "trainable": {"experts": trainable_summary(experts.model), "LoRA only": trainable_summary(lora.model)},
        "variants": {
            name: {"median_step_s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t), "steps_s": t}
            for name, t in times.items()
        },
    }
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
