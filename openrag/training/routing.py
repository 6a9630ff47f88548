"""Router statistics of a forward pass: per-layer expert load and the optional load-balancing loss.

Both read the router logits each :class:`~openrag.model.experts.MoEAdapter` keeps from its last forward and
count only real tokens (``attention_mask == 1``), never padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.experts import MoEAdapter


def _tokens(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Router logits of the real tokens: [B, T, E] -> [N, E]."""
    if attention_mask is None:
        return logits.flatten(0, -2)
    return logits[attention_mask.bool()]


@torch.no_grad()
def expert_counts(adapters: list[MoEAdapter], attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[L, E] how many (token, slot) routings each expert of each layer received in the last forward."""
    rows = []
    for adapter in adapters:
        logits = _tokens(adapter.last_router_logits, attention_mask)  # [N, E]
        chosen = logits.topk(adapter.config.topk, dim=-1).indices  # [N, k]
        rows.append(torch.bincount(chosen.flatten(), minlength=adapter.config.num_experts))
    return torch.stack(rows)  # [L, E]


def load_balancing_loss(adapters: list[MoEAdapter], attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Switch-style auxiliary loss, averaged over layers: per layer ``E * sum_e f_e * P_e`` where
    ``f_e`` is the share of routings sent to expert e (the top-k choices, summing to 1 over experts)
    and ``P_e`` the mean router probability of e (softmax over all E logits). Equals 1 when balanced;
    the gradient flows through ``P_e`` only (``f_e`` is a count)."""
    losses = []
    for adapter in adapters:
        logits = _tokens(adapter.last_router_logits, attention_mask).float()  # [N, E]
        num_experts, k = adapter.config.num_experts, adapter.config.topk
        probs = F.softmax(logits, dim=-1)  # [N, E]
        chosen = logits.detach().topk(k, dim=-1).indices  # [N, k]
        share = torch.bincount(chosen.flatten(), minlength=num_experts).float() / chosen.numel()  # [E]
        losses.append(num_experts * (share * probs.mean(0)).sum())
    return torch.stack(losses).mean()


class LoadMeter:
    """Expert-routing counts and token counts accumulated between two logs (on the training device)."""

    def __init__(self):
        self.counts: torch.Tensor | None = None  # [L, E]
        self.tokens: torch.Tensor | float = 0.0  # real (non-padding) tokens
        self.batches = 0
        self.aux_sum = 0.0
        self.aux_batches = 0

    def add(self, adapters: list[MoEAdapter], attention_mask: torch.Tensor | None, num_tokens: torch.Tensor) -> None:
        self.tokens = self.tokens + num_tokens
        self.batches += 1
        if adapters:
            counts = expert_counts(adapters, attention_mask)
            self.counts = counts if self.counts is None else self.counts + counts

    def add_aux(self, value: float) -> None:
        self.aux_sum += value
        self.aux_batches += 1

    def reset(self) -> None:
        self.__init__()
