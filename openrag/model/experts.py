"""Open-RAG's sparse mixture of adapter experts, injected into every decoder layer's FFN.

For each layer, with ``x`` the FFN input and ``y = FFN(x)`` the frozen dense output (SPEC section 1):

    logits = router(x);  w, idx = topk(logits, k);  w = softmax(w)
    out    = y + sum_j w_j * moe_scaling * adapter_up(GELU(adapter_down(Dropout(y))))

Module names follow the released checkpoints, so that their weights load by key:
``mlp.moe_adapter.router.weight`` and ``mlp.moe_adapter.experts.expert_{j}.adapter_{down,up}.weight``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MoEConfig:
    """Shape of the expert layer; the same four numbers the released checkpoints store in config.json."""

    num_experts: int = 8
    topk: int = 2
    adapter_dim: int = 512
    moe_scaling: float = 0.25
    dropout: float = 0.1

    def __post_init__(self):
        if self.num_experts < 1 or self.adapter_dim < 1:
            raise ValueError(f"num_experts and adapter_dim must be positive, got {self.num_experts}, {self.adapter_dim}")
        if not 1 <= self.topk <= self.num_experts:
            raise ValueError(f"topk must be between 1 and num_experts={self.num_experts}, got {self.topk}")

    def to_dict(self) -> dict:
        return asdict(self)


class Expert(nn.Module):
    """One adapter expert: ``moe_scaling * adapter_up(GELU(adapter_down(h)))`` (dropout is applied by the caller)."""

    def __init__(self, hidden_size: int, adapter_dim: int):
        super().__init__()
        self.adapter_down = nn.Linear(hidden_size, adapter_dim, bias=False)
        self.adapter_up = nn.Linear(adapter_dim, hidden_size, bias=False)


class MoEAdapter(nn.Module):
    """Router plus experts. Each (token, chosen expert) pair is computed once: the pairs are grouped by
    expert into one padded batch and the experts run as two batched matmuls, with no Python loop over
    tokens or experts and no work for the experts a token did not choose."""

    def __init__(self, hidden_size: int, config: MoEConfig):
        super().__init__()
        self.config = config
        self.router = nn.Linear(hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleDict(
            {f"expert_{j}": Expert(hidden_size, config.adapter_dim) for j in range(config.num_experts)}
        )
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()
        # Kept from the last forward for expert-load logging and the optional load-balancing loss.
        self.last_routing: torch.Tensor | None = None  # [B, T, E] gate weights, zero where not chosen (detached)
        self.last_router_logits: torch.Tensor | None = None  # [B, T, E]

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))
        for expert in self.experts.values():
            nn.init.kaiming_uniform_(expert.adapter_down.weight, a=math.sqrt(5))
            nn.init.zeros_(expert.adapter_up.weight)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> router logits [N, E], chosen experts [N, k], their weights [N, k]
        (softmax over the k chosen logits only)."""
        logits = self.router(x)  # [N, E]
        top_logits, top_idx = logits.topk(self.config.topk, dim=-1)  # [N, k]
        top_w = F.softmax(top_logits, dim=-1, dtype=torch.float32).to(x.dtype)  # [N, k]
        return logits, top_idx, top_w

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: FFN input [B, T, D]; y: FFN output [B, T, D] -> expert term [B, T, D]."""
        cfg = self.config
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), self.dropout(y).reshape(-1, y.shape[-1])  # [N, D]
        logits, top_idx, top_w = self.route(flat_x)
        self.last_router_logits = logits.view(*x.shape[:-1], -1)
        self.last_routing = torch.zeros_like(logits).scatter(-1, top_idx, top_w).detach().view_as(self.last_router_logits)

        # Group the N*k (token, expert) pairs by expert: pair p of expert e goes to row slot[p] of block e.
        expert_of = top_idx.reshape(-1)  # [N*k]
        order = expert_of.argsort(stable=True)  # [N*k] pairs sorted by expert
        sorted_expert = expert_of[order]  # [N*k]
        counts = torch.bincount(expert_of, minlength=cfg.num_experts)  # [E]
        slot = torch.arange(order.numel(), device=x.device) - (counts.cumsum(0) - counts)[sorted_expert]  # [N*k]
        token = order // cfg.topk  # [N*k] token of each sorted pair
        blocks = flat_y.new_zeros(cfg.num_experts, int(counts.max()), flat_y.shape[-1])  # [E, C, D]
        blocks = blocks.index_put((sorted_expert, slot), flat_y[token])

        down = torch.stack([e.adapter_down.weight for e in self.experts.values()])  # [E, r, D]
        up = torch.stack([e.adapter_up.weight for e in self.experts.values()])  # [E, D, r]
        hidden = F.gelu(torch.bmm(blocks.to(down.dtype), down.transpose(1, 2)))  # [E, C, r]
        expert_out = torch.bmm(hidden, up.transpose(1, 2))  # [E, C, D]

        weighted = expert_out[sorted_expert, slot] * top_w.reshape(-1)[order, None].to(expert_out.dtype)  # [N*k, D]
        out = torch.zeros_like(flat_y, dtype=expert_out.dtype).index_add(0, token, weighted)  # [N, D]
        return (cfg.moe_scaling * out).to(y.dtype).view_as(y)


class MoEFeedForward(nn.Module):
    """Wraps a decoder layer's dense FFN (kept as ``dense_mlp``) and adds the expert term to its output.

    (Not called ``base_layer``: PEFT treats any module with that attribute as one of its own LoRA layers.)"""

    def __init__(self, dense_mlp: nn.Module, hidden_size: int, config: MoEConfig):
        super().__init__()
        self.dense_mlp = dense_mlp
        self.moe_adapter = MoEAdapter(hidden_size, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense_mlp(x)  # [B, T, D]
        return y + self.moe_adapter(x, y)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-family causal LM (also under a PEFT wrapper)."""
    for candidate in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        inner = getattr(candidate, "model", None)
        if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
            return inner.layers
    raise ValueError(
        f"{type(model).__name__} has no `model.layers` list of decoder layers; "
        "openrag supports Llama-family causal LMs (Llama, Mistral, Qwen2, SmolLM2, ...)"
    )


def inject_moe(
    model: nn.Module,
    num_experts: int,
    topk: int,
    adapter_dim: int,
    moe_scaling: float,
    dropout: float = 0.1,
) -> nn.Module:
    """Swap every decoder layer's MLP for a :class:`MoEFeedForward`, in place, and record the settings
    in ``model.config`` under the released checkpoints' field names. Returns the model."""
    config = MoEConfig(num_experts, topk, adapter_dim, moe_scaling, dropout)
    hidden_size = model.config.hidden_size
    for layer in decoder_layers(model):
        if isinstance(layer.mlp, MoEFeedForward):
            raise ValueError("this model already has experts; load it without calling inject_moe again")
        ref = next(layer.mlp.parameters())
        layer.mlp = MoEFeedForward(layer.mlp, hidden_size, config).to(device=ref.device)
        layer.mlp.moe_adapter.to(dtype=ref.dtype if ref.dtype.is_floating_point else torch.float32)
    for key in ("num_experts", "topk", "adapter_dim", "moe_scaling"):
        setattr(model.config, key, getattr(config, key))
    return model


def moe_config_of(model: nn.Module) -> MoEConfig | None:
    """The expert settings of an injected model, or None for a dense one."""
    for layer in decoder_layers(model):
        if isinstance(layer.mlp, MoEFeedForward):
            return layer.mlp.moe_adapter.config
    return None


def remove_moe(model: nn.Module) -> nn.Module:
    """Undo :func:`inject_moe`: put the dense FFNs back and drop the experts."""
    for layer in decoder_layers(model):
        if isinstance(layer.mlp, MoEFeedForward):
            layer.mlp = layer.mlp.dense_mlp
    for key in ("num_experts", "topk", "adapter_dim", "moe_scaling"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    return model


def moe_adapters(model: nn.Module) -> list[MoEAdapter]:
    """The expert layers in decoder order (empty for a dense model)."""
    return [layer.mlp.moe_adapter for layer in decoder_layers(model) if isinstance(layer.mlp, MoEFeedForward)]
