"""Open-RAG's sparse mixture of adapter experts, injected into every decoder layer's FFN.

For each layer, with ``x`` the FFN input and ``y = FFN(x)`` the frozen dense output (docs/method.md section 1):

    logits = router(x);  w, idx = topk(logits, k);  w = softmax(w)
    out    = y + sum_j w_j * moe_scaling * adapter_up(GELU(adapter_down(Dropout(y))))

Module names follow the released checkpoints, so that their weights load by key:
``mlp.moe_adapter.router.weight`` and ``mlp.moe_adapter.experts.expert_{j}.adapter_{down,up}.weight``.

Two ways to compute the expert term: grouped (only the chosen (token, expert) pairs; training and wide experts)
and gated (every expert on every token, scaled by its gate, as two plain matmuls; inference with narrow
experts, and the vLLM model). :func:`uses_gated_experts` picks between them.
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


MOE_KEYS_FIELDS = ("num_experts", "topk", "adapter_dim", "moe_scaling")  # what config.json records of a MoEConfig

GATED_MAX_WIDTH: dict[str, float] = {"cpu": 1.0}
"""Per device type, the largest experts' total width over the hidden size, ``num_experts * adapter_dim /
hidden_size``, at which inference takes the gated path; device types not listed keep the grouped path.
Gated costs E/k times the chosen experts' FLOPs but is two plain matmuls; grouped does only the chosen
pairs but pays for sorting and copying them, more than those extra FLOPs while the experts are narrow.
1.0 is a first guess (the bundled model: 8 x 32 = 256 against 576); set it from benchmarks/bench_moe_forward.py."""


def uses_gated_experts(config: MoEConfig, hidden_size: int, device: torch.device) -> bool:
    """Whether inference on ``device`` computes the expert term gated (see :data:`GATED_MAX_WIDTH`)."""
    return config.num_experts * config.adapter_dim <= GATED_MAX_WIDTH.get(device.type, 0.0) * hidden_size


def route(x: torch.Tensor, router_weight: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, D], router_weight [E, D] -> router logits [N, E], chosen experts [N, k], their weights [N, k]
    (softmax over the k chosen logits only)."""
    # In float32 outside autocast (a bf16 model's inference): E products per token cost nothing, and bf16 logits
    # (steps of 1/16 at 8) flip near-tied top-k choices and with them the whole expert term.
    logits = F.linear(x.float(), router_weight.float())  # [N, E]
    top_logits, top_idx = logits.topk(topk, dim=-1)  # [N, k]
    top_w = F.softmax(top_logits, dim=-1, dtype=torch.float32).to(logits.dtype)  # [N, k] (bf16 under autocast)
    return logits, top_idx, top_w


def gate_matrix(logits: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
    """The gate of every expert, [N, E]: its routing weight where chosen, zero elsewhere."""
    return torch.zeros_like(logits).scatter(-1, top_idx, top_w)


def gated_expert_term(
    y: torch.Tensor, gates: torch.Tensor, down: torch.Tensor, up: torch.Tensor, config: MoEConfig
) -> torch.Tensor:
    """``sum_j gate_j * moe_scaling * adapter_up_j(GELU(adapter_down_j(y)))`` over every expert j, with the
    experts' weights stacked: down [E*r, D] (rows j*r..(j+1)*r are expert j's), up [D, E*r] (columns likewise).
    y [N, D], gates [N, E] -> [N, D] in the weights' dtype. A zero gate removes an expert exactly."""
    N, E, r = y.shape[0], config.num_experts, config.adapter_dim
    hidden = F.gelu(F.linear(y.to(down.dtype), down))  # [N, E*r]
    scale = (config.moe_scaling * gates).to(hidden.dtype)  # [N, E]
    hidden = (hidden.view(N, E, r) * scale[:, :, None]).view(N, E * r)  # [N, E*r]
    return F.linear(hidden, up)  # [N, D]


class Expert(nn.Module):
    """One adapter expert: ``moe_scaling * adapter_up(GELU(adapter_down(h)))`` (dropout is applied by the caller)."""

    def __init__(self, hidden_size: int, adapter_dim: int):
        super().__init__()
        self.adapter_down = nn.Linear(hidden_size, adapter_dim, bias=False)
        self.adapter_up = nn.Linear(adapter_dim, hidden_size, bias=False)


class MoEAdapter(nn.Module):
    """Router plus experts. Training computes each (token, chosen expert) pair once: the pairs are grouped
    by expert into one padded batch and the experts run as two batched matmuls, with no Python loop over
    tokens or experts and no work for the experts a token did not choose. Inference (eval mode, no gradient
    wanted for the experts) takes the gated path instead where :func:`uses_gated_experts` says so."""

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
        self._stacked: tuple | None = None  # see stacked_weights

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))
        for expert in self.experts.values():
            nn.init.kaiming_uniform_(expert.adapter_down.weight, a=math.sqrt(5))
            nn.init.zeros_(expert.adapter_up.weight)

    def train(self, mode: bool = True) -> MoEAdapter:
        self._stacked = None  # no copy of the experts' weights is held while training
        return super().train(mode)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: FFN input [B, T, D]; y: FFN output [B, T, D] -> expert term [B, T, D]."""
        cfg = self.config
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # [N, D]
        logits, top_idx, top_w = route(flat_x, self.router.weight, cfg.topk)  # [N, E], [N, k], [N, k]
        gates = gate_matrix(logits, top_idx, top_w)  # [N, E]
        self.last_router_logits = logits.view(*x.shape[:-1], -1)
        self.last_routing = gates.detach().view_as(self.last_router_logits)

        if not self.training and uses_gated_experts(cfg, flat_x.shape[-1], x.device) and not self._expert_grad_wanted():
            out = gated_expert_term(flat_y, gates, *self.stacked_weights(), cfg)  # [N, D]
        else:
            out = cfg.moe_scaling * self._grouped_term(self.dropout(flat_y), top_idx, top_w)  # [N, D]
        return out.to(y.dtype).view_as(y)

    def _grouped_term(self, flat_y: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """flat_y [N, D], top_idx and top_w [N, k] -> sum_j w_j * adapter_up_j(GELU(adapter_down_j(y))) [N, D]."""
        cfg = self.config
        # Group the N*k (token, expert) pairs by expert: pair p of expert e goes to row slot[p] of block e.
        expert_of = top_idx.reshape(-1)  # [N*k]
        order = expert_of.argsort(stable=True)  # [N*k] pairs sorted by expert
        sorted_expert = expert_of[order]  # [N*k]
        counts = torch.bincount(expert_of, minlength=cfg.num_experts)  # [E]
        slot = torch.arange(order.numel(), device=flat_y.device) - (counts.cumsum(0) - counts)[sorted_expert]  # [N*k]
        token = order // cfg.topk  # [N*k] token of each sorted pair
        blocks = flat_y.new_zeros(cfg.num_experts, int(counts.max()), flat_y.shape[-1])  # [E, C, D]
        blocks = blocks.index_put((sorted_expert, slot), flat_y[token])

        down = torch.stack([e.adapter_down.weight for e in self.experts.values()])  # [E, r, D]
        up = torch.stack([e.adapter_up.weight for e in self.experts.values()])  # [E, D, r]
        hidden = F.gelu(torch.bmm(blocks.to(down.dtype), down.transpose(1, 2)))  # [E, C, r]
        expert_out = torch.bmm(hidden, up.transpose(1, 2))  # [E, C, D]

        weighted = expert_out[sorted_expert, slot] * top_w.reshape(-1)[order, None].to(expert_out.dtype)  # [N*k, D]
        return torch.zeros_like(flat_y, dtype=expert_out.dtype).index_add(0, token, weighted)  # [N, D]

    def _expert_grad_wanted(self) -> bool:
        return torch.is_grad_enabled() and any(w.requires_grad for w in self._expert_weights())

    def _expert_weights(self) -> list[torch.Tensor]:
        return [w for e in self.experts.values() for w in (e.adapter_down.weight, e.adapter_up.weight)]

    def stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts' weights stacked for :func:`gated_expert_term`: down [E*r, D], up [D, E*r], detached.

        Kept between forwards (re-stacking would cost a decoding step a copy of every expert weight) until
        any expert weight is replaced or changed in place, as ``load_state_dict``, ``.to()`` and optimizers
        do; the copy is dropped on ``train()``/``eval()``. A change through ``.data`` (which bypasses the
        version counter) is not seen: call ``train()`` or ``eval()`` after one."""
        weights = self._expert_weights()
        key = [(w.data_ptr(), w._version) for w in weights]
        if self._stacked is None or self._stacked[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, also when built under inference_mode
                down = torch.cat(weights[0::2])  # [E*r, D]
                up = torch.cat(weights[1::2], dim=1)  # [D, E*r]
            # The detached weights keep their memory alive, so that no new weight can take an address in the key.
            self._stacked = (key, down, up, [w.detach() for w in weights])
        return self._stacked[1], self._stacked[2]


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
    dropout: float = MoEConfig.dropout,
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
    for key in MOE_KEYS_FIELDS:
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
    for key in MOE_KEYS_FIELDS:
        if hasattr(model.config, key):
            delattr(model.config, key)
    return model


def moe_adapters(model: nn.Module) -> list[MoEAdapter]:
    """The expert layers in decoder order (empty for a dense model)."""
    return [layer.mlp.moe_adapter for layer in decoder_layers(model) if isinstance(layer.mlp, MoEFeedForward)]
