"""The adapter experts of docs/method.md section 1 in a form a compiled serving graph takes: fixed shapes, no Python
branches on data, no per-expert loop.

Every expert runs on every token and the gate (the softmax over the k chosen router logits, zero for the
others) scales its hidden activations, so the experts are two plain matmuls over the stacked weights:

    gates  = scatter(softmax(topk(router(x))))                      # [N, E], k non-zeros per row
    hidden = GELU(y @ down^T) * gates (per expert block of r)        # [N, E*r]
    out    = moe_scaling * hidden @ up^T                             # [N, D]

which is ``sum_j w_j * moe_scaling * adapter_up_j(GELU(adapter_down_j(y)))`` over the chosen j, as in
``openrag.model.experts.MoEAdapter`` (a zero gate removes an expert exactly). It costs E/k times the
chosen experts' FLOPs (4x at 8 experts, top-2): a quarter of the dense FFN's, a sixth of a decoder layer's at
the released 7B sizes (hidden 4096, adapter_dim 512), the price of a graph without data-dependent shapes.

Pure torch: the vLLM model (model.py) puts it in each decoder layer; the math is
``openrag.model.experts.gated_expert_term``, which MoEAdapter also runs at inference for narrow experts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from ..model.experts import MoEConfig, gate_matrix, gated_expert_term, route

_EXPERT_KEY = re.compile(r"^experts\.expert_(\d+)\.adapter_(down|up)\.weight$")


class GatedExperts(nn.Module):
    """Router and experts of one layer, their weights stacked: ``router`` [E, D], ``down`` [E*r, D] (rows
    j*r..(j+1)*r are expert j's ``adapter_down``), ``up`` [D, E*r] (columns likewise, ``adapter_up``)."""

    def __init__(self, hidden_size: int, config: MoEConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        E, r, D = config.num_experts, config.adapter_dim, hidden_size
        self.router = nn.Parameter(torch.empty(E, D, dtype=dtype), requires_grad=False)
        self.down = nn.Parameter(torch.empty(E * r, D, dtype=dtype), requires_grad=False)
        self.up = nn.Parameter(torch.empty(D, E * r, dtype=dtype), requires_grad=False)
        self._loaded: dict[str, set[int]] = {"router": set(), "down": set(), "up": set()}  # parts given so far

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: FFN input [..., D]; y: FFN output [..., D] -> expert term [..., D]."""
        cfg = self.config
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # [N, D]
        logits, top_idx, top_w = route(flat_x, self.router, cfg.topk)  # [N, E], [N, k], [N, k]
        out = gated_expert_term(flat_y, gate_matrix(logits, top_idx, top_w), self.down, self.up, cfg)  # [N, D]
        return out.to(y.dtype).view_as(y)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the released key names (``router.weight``, ``experts.expert_{j}.adapter_{down,up}.weight``,
        relative to ``mlp.moe_adapter``) into the stacked parameters; raises on a key or shape that has no place.

        vLLM may call this more than once for one layer (its weights stream file by file, and a sharded
        checkpoint can split a layer's experts over two files). Returns the parameters whose every part has been
        given by now; vLLM reports the others as not loaded."""
        cfg = self.config
        r = cfg.adapter_dim
        seen = self._loaded
        for name, tensor in weights:
            if name == "router.weight":
                _copy(self.router, tensor, name)
                seen["router"].add(0)
                continue
            m = _EXPERT_KEY.match(name)
            if m is None or int(m.group(1)) >= cfg.num_experts:
                raise ValueError(f"moe_adapter.{name}: no such expert weight (num_experts={cfg.num_experts}); "
                                 "expert keys look like moe_adapter.experts.expert_J.adapter_down.weight")
            j, part = int(m.group(1)), m.group(2)
            if part == "down":
                _copy(self.down[j * r : (j + 1) * r], tensor, name)  # [r, D]
            else:
                _copy(self.up[:, j * r : (j + 1) * r], tensor, name)  # [D, r]
            seen[part].add(j)
        complete = {"router": {0}, "down": set(range(cfg.num_experts)), "up": set(range(cfg.num_experts))}
        return {name for name, parts in seen.items() if parts == complete[name]}


def _copy(target: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if tuple(target.shape) != tuple(tensor.shape):
        raise ValueError(f"moe_adapter.{name} has shape {list(tensor.shape)}, expected {list(target.shape)} "
                         "(do adapter_dim and hidden_size in config.json match the weights?)")
    target.copy_(tensor.to(target.dtype))
