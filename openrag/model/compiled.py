"""Compiled forwards: the layer-local work of every decoder layer through ``torch.compile`` (inductor).

Outside its matrix products a forward is many small element-wise operations, each a pass over memory and a
dispatch: RMSNorm, SiLU x up, and the expert layer's router, top-k, softmax, gate scatter and gating
(BENCHMARKS.md, "Where the built-in engine's time goes"). Compiled, each of these becomes a few fused loops.

What is compiled is pure functions of tensors, :func:`rms_norm` and :func:`moe_feed_forward` (:func:`feed_forward`
for a dense model), called with each layer's weights as arguments: every layer has weights of the same shapes,
so all layers share one graph, and the token count N is marked unbacked (a size the compiler may assume
nothing of, not even that it is not 1), so that one graph serves every batch and length. Two graphs in all,
however long the run; no padding to buckets is needed. Attention, with the engine's KV cache
written by Python ints, stays eager: compiled, it would be a graph per cache length.

:func:`compile_model` puts these in place on a loaded model (the modules' own ``forward`` is shadowed on the
instance, so that weights, names and checkpoints are untouched) and :func:`eager_model` takes them away. Only
inference is compiled: the experts' gated form is the inference path (experts.py); a module in training mode
runs its own eager forward.

Inductor keeps compiled code on disk (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``), so
a second process compiles from that cache in a fraction of the first one's time (BENCHMARKS.md, "Compiled
forwards").
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .experts import MoEConfig, MoEFeedForward, decoder_layers, gate_matrix, gated_expert_term, route, uses_gated_experts

# The norms whose forward is :func:`rms_norm` (transformers copies Llama's into these).
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, D], weight [D] -> [N, D]: Llama's RMSNorm (computed in float32, scaled in the input's dtype)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # [N, D]
    return weight * h.to(x.dtype)


def feed_forward(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """x [N, D] -> [N, D]: a Llama MLP, ``down(SiLU(gate(x)) * up(x))``."""
    return F.linear(F.silu(F.linear(x, gate_w)) * F.linear(x, up_w), down_w)


def moe_feed_forward(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor,
                     router_w: torch.Tensor, experts_down: torch.Tensor, experts_up: torch.Tensor,
                     config: MoEConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, D] -> (FFN output with the gated expert term [N, D], router logits [N, E], gates [N, E]): the Llama
    MLP and :class:`~openrag.model.experts.MoEAdapter`'s inference path."""
    y = feed_forward(x, gate_w, up_w, down_w)  # [N, D]
    logits, top_idx, top_w = route(x, router_w, config.topk)  # [N, E], [N, k], [N, k]
    gates = gate_matrix(logits, top_idx, top_w)  # [N, E]
    return y + gated_expert_term(y, gates, experts_down, experts_up, config).to(y.dtype), logits, gates


@functools.cache
def compiled(fn):
    """``torch.compile(fn)``, made once per function, on first use (making one imports the compiler: seconds)."""
    return torch.compile(fn)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """x [..., D] -> [N, D], N marked unbacked (one graph for every N)."""
    flat = x.reshape(-1, x.shape[-1])
    torch._dynamo.decorators.mark_unbacked(flat, 0)
    return flat


def _norm_forward(norm: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        if norm.training:
            return type(norm).forward(norm, x)
        return compiled(rms_norm)(_tokens(x), norm.weight, norm.variance_epsilon).view_as(x)

    return forward


def _mlp_forward(mlp: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        if mlp.training:
            return type(mlp).forward(mlp, x)
        return compiled(feed_forward)(_tokens(x), mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight).view_as(x)

    return forward


def _moe_forward(ffn: MoEFeedForward):
    mlp, adapter = ffn.dense_mlp, ffn.moe_adapter

    def forward(x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        if ffn.training or adapter._expert_grad_wanted():
            return type(ffn).forward(ffn, x)
        out, logits, gates = compiled(moe_feed_forward)(_tokens(x), mlp.gate_proj.weight, mlp.up_proj.weight,
                                                        mlp.down_proj.weight, adapter.router.weight,
                                                        *adapter.stacked_weights(), adapter.config)
        adapter.last_router_logits = logits.view(*x.shape[:-1], -1)  # [B, T, E]
        adapter.last_routing = gates.view_as(adapter.last_router_logits)
        return out.view_as(x)

    return forward


def _shadow(module: nn.Module, forward) -> None:
    """Set ``forward`` on the instance (in front of its class's), marked as this module's."""
    forward.openrag_compiled = True
    module.forward = forward


def _shadowed(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), "openrag_compiled", False)


def _plain_mlp(mlp: nn.Module | None) -> bool:
    """A Llama MLP as :func:`feed_forward` computes it: SiLU, three bias-free plain linear layers."""
    return (getattr(getattr(mlp, "config", None), "hidden_act", None) == "silu"
            and all(type(getattr(mlp, p, None)) is nn.Linear and getattr(mlp, p).bias is None
                    for p in ("gate_proj", "up_proj", "down_proj")))


def _replacements(layer: nn.Module, hidden_size: int, device: torch.device) -> list[tuple[nn.Module, object]]:
    """(module, compiled forward) for each part of ``layer`` this module computes: RMSNorms, and the FFN where it is
    a plain Llama MLP, alone or under gated experts. Anything else (a LoRA-wrapped or quantised projection, grouped
    experts) keeps its own forward."""
    found = [(m, _norm_forward(m)) for m in (layer.input_layernorm, layer.post_attention_layernorm)
             if type(m).__name__ in RMS_NORMS]
    ffn = layer.mlp
    if isinstance(ffn, MoEFeedForward):
        if _plain_mlp(ffn.dense_mlp) and uses_gated_experts(ffn.moe_adapter.config, hidden_size, device):
            found.append((ffn, _moe_forward(ffn)))
    elif _plain_mlp(ffn):
        found.append((ffn, _mlp_forward(ffn)))
    return found


def worth_compiling(model: nn.Module) -> bool:
    """Whether ``--compile auto`` compiles ``model``: where BENCHMARKS.md ("Compiled forwards") measured the
    engine faster compiled, a CPU running on at least 2 threads."""
    device = next(model.parameters()).device
    return device.type == "cpu" and torch.get_num_threads() >= 2


def compile_as(model: nn.Module, choice: str) -> bool:
    """Apply ``--compile`` (``on``, ``off`` or ``auto``: :func:`worth_compiling`) to a loaded model; whether it compiled."""
    if choice == "on" or (choice == "auto" and worth_compiling(model)):
        return compile_model(model) > 0
    return False


def compile_model(model: nn.Module) -> int:
    """Run ``model``'s RMSNorms and expert FFNs (inference) through the compiled functions and compile them now
    (a forward of one token, under ``torch.inference_mode`` as the engine runs), so that the cost is paid here
    rather than by the first question. Returns how many modules were replaced
    (see :func:`_replacements`)."""
    config = model.config.get_text_config()
    device = next(model.parameters()).device
    count = 0
    for layer in decoder_layers(model):
        for module, forward in _replacements(layer, config.hidden_size, device):
            _shadow(module, forward)
            count += 1
    if count and not model.training:
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    return count


def eager_model(model: nn.Module) -> None:
    """Undo :func:`compile_model`: every module runs its own forward again."""
    for module in model.modules():
        if _shadowed(module):
            del module.forward


def is_compiled(model: nn.Module) -> bool:
    return any(_shadowed(module) for module in model.modules())
