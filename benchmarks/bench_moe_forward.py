"""Forward time of the bundled base with experts against the dense model, for each way of computing the
expert term: grouped (vectorised routing), a per-expert Python loop of the same math, and gated (every
expert on every token); and which of grouped and gated the model takes at inference (issue: the MoE model layer).

    python benchmarks/bench_moe_forward.py [--experts 8 --topk 2 --adapter_dim 64 --batch 4 --seq 256]

All variants run in this one process on the same weights and the same inputs, interleaved round by round;
the reported time is the median over rounds.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from openrag import inject_moe, load_model
from openrag.model import experts
from openrag.model.experts import MoEAdapter, moe_adapters, uses_gated_experts


def loop_forward(self: MoEAdapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same expert term computed the usual slow way: a Python loop over experts, each gathering its tokens."""
    cfg = self.config
    flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # [N, D]
    weights, idx = self.router(flat_x).topk(cfg.topk, dim=-1)  # [N, k]
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(flat_y.dtype)
    out = torch.zeros_like(flat_y)
    for j, expert in enumerate(self.experts.values()):
        rows, slot = torch.where(idx == j)  # tokens that chose expert j, and in which of their k slots
        if rows.numel() == 0:
            continue
        h = expert.adapter_up(F.gelu(expert.adapter_down(self.dropout(flat_y[rows]))))  # [n_j, D]
        out.index_add_(0, rows, h * weights[rows, slot, None])
    return (cfg.moe_scaling * out).reshape_as(y)


def timed(model, ids, gated_max_width: float, rounds_out: list[float]) -> None:
    experts.GATED_MAX_WIDTH["cpu"] = gated_max_width  # 0: always grouped, inf: always gated
    start = time.perf_counter()
    with torch.no_grad():
        model(ids)
    rounds_out.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--adapter_dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    dense, _ = load_model("smollm2", dtype=torch.float32, device="cpu")  # as measured in BENCHMARKS.md, on any CPU
    moe = inject_moe(copy.deepcopy(dense), args.experts, args.topk, args.adapter_dim, 0.25).eval()
    with torch.no_grad():  # non-zero experts, so that every variant does its full work
        for adapter in moe_adapters(moe):
            for expert in adapter.experts.values():
                expert.adapter_up.weight.normal_(0, 0.02)
    looped = copy.deepcopy(moe)
    for adapter in moe_adapters(looped):
        adapter.forward = loop_forward.__get__(adapter)
    ids = torch.randint(0, 49152, (args.batch, args.seq))

    shipped = experts.GATED_MAX_WIDTH["cpu"]
    # name -> (model, GATED_MAX_WIDTH["cpu"] while it runs)
    variants = {"dense": (dense, shipped), "experts, grouped": (moe, 0.0),
                "experts, per-expert loop": (looped, shipped), "experts, gated": (moe, math.inf)}
    with torch.no_grad():  # every variant computes the same expert term (checked on one layer)
        adapter = moe_adapters(moe)[0]
        x, y = torch.randn(args.batch, args.seq, 576), torch.randn(args.batch, args.seq, 576)
        for width in (0.0, math.inf):
            experts.GATED_MAX_WIDTH["cpu"] = width
            torch.testing.assert_close(loop_forward(adapter, x, y), adapter(x, y), atol=1e-5, rtol=1e-4)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for model, width in variants.values():  # warm-up
        timed(model, ids, width, [])
    for _ in range(args.rounds):
        for name, (model, width) in variants.items():
            timed(model, ids, width, times[name])
    experts.GATED_MAX_WIDTH["cpu"] = shipped

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"SmolLM2-135M, {args.experts} experts, top-{args.topk}, adapter_dim {args.adapter_dim}, input {args.batch}x{args.seq}, median of {args.rounds}")
    for name, t in med.items():
        print(f"  {name:<28} {t * 1000:8.1f} ms  {t / med['dense'] - 1:+7.1%} over dense")
    path = "gated" if uses_gated_experts(adapter.config, 576, torch.device("cpu")) else "grouped"
    print(f"  the model takes the {path} path at inference here (GATED_MAX_WIDTH['cpu'] = {shipped}: "
          f"gated while num_experts * adapter_dim <= {shipped} * hidden_size)")


if __name__ == "__main__":
    main()
