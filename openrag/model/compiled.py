"""Compiled forwards: each decoder layer's work outside attention through ``torch.compile`` (inductor).

Outside its matrix products a forward is many small element-wise operations, each a pass over memory and a
dispatch: RMSNorm, residual adds, SiLU x up, and the expert layer's router, top-k, softmax, gate scatter and
gating (BENCHMARKS.md, "Where the built-in engine's time goes"). Compiled, these become a few fused loops.

A layer makes two compiled calls: its input norm (:func:`rms_norm`), then after attention everything up to its
output (:func:`expert_block`: add, norm, the MLP and the gated experts, add; :func:`dense_block` for a dense
model). Attention, with the engine's KV cache written by Python ints, stays eager: compiled, it would be a graph
per cache length. Fewer, larger calls matter on a CPU: each compiled call costs tens of microseconds of guard
checks, and one call per module (norm, norm, FFN) measured slower than eager (BENCHMARKS.md, "Compiled forwards").

The compiled functions are pure functions of tensors, called with each layer's weights as arguments: every
layer has weights of the same shapes, so all layers share one graph; the token count N is marked unbacked (a
size the compiler may assume nothing of, not even that it is not 1), so one graph serves every batch and
length. Two graphs in all, however long the run; no padding to buckets is needed.

:func:`compile_model` puts these in place on a loaded model (each layer's ``forward`` is shadowed on the
instance, so that weights, names and checkpoints are untouched). Only
inference is compiled: the experts' gated form is the inference path (experts.py); a layer in training mode
runs its own eager forward.

Inductor keeps compiled code on disk (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``), so
a later process compiles from that cache in a fraction of the first one's time.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .experts import MoEConfig, MoEFeedForward, decoder_layers, gate_matrix, gated_expert_term, route, uses_gated_experts

# The decoder layers whose forward is "norm, attention, add, norm, FFN, add", and the norms whose forward is
# :func:`rms_norm` (transformers copies Llama's into these).
DECODER_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")
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


def dense_block(h: torch.Tensor, attn: torch.Tensor, norm_w: torch.Tensor, eps: float, gate_w: torch.Tensor,
                up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """What a Llama decoder layer does after attention: h [N, D] (the layer's input), attn [N, D] (attention's
    output) -> the layer's output [N, D], ``h + attn + FFN(RMSNorm(h + attn))``."""
    h = h + attn  # [N, D]
    return h + feed_forward(rms_norm(h, norm_w, eps), gate_w, up_w, down_w)


def expert_block(h: torch.Tensor, attn: torch.Tensor, norm_w: torch.Tensor, eps: float, gate_w: torch.Tensor,
                 up_w: torch.Tensor, down_w: torch.Tensor, router_w: torch.Tensor, experts_down: torch.Tensor,
                 experts_up: torch.Tensor, config: MoEConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dense_block` with the experts' FFN (:func:`moe_feed_forward`): (the layer's output [N, D], router
    logits [N, E], gates [N, E])."""
    h = h + attn  # [N, D]
    out, logits, gates = moe_feed_forward(rms_norm(h, norm_w, eps), gate_w, up_w, down_w, router_w, experts_down,
                                          experts_up, config)
    return h + out, logits, gates


@functools.cache
def compiled(fn):
    """``torch.compile(fn)``, made once per function, on first use (making one imports the compiler: seconds)."""
    return torch.compile(fn)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """x [..., D] -> [N, D], N marked unbacked (one graph for every N)."""
    flat = x.reshape(-1, x.shape[-1])
    torch._dynamo.decorators.mark_unbacked(flat, 0)
    return flat


def _layer_forward(layer: nn.Module):
    """The compiled forward of a decoder layer: its input norm compiled, attention (with the KV cache) eager,
    everything after attention one compiled call."""
    norm1, attention, norm2 = layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm
    ffn = layer.mlp
    mlp, adapter = (ffn.dense_mlp, ffn.moe_adapter) if isinstance(ffn, MoEFeedForward) else (ffn, None)

    def forward(hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:  # hidden_states [B, T, D]
        if layer.training or (adapter is not None and adapter._expert_grad_wanted()):
            return type(layer).forward(layer, hidden_states, **kwargs)
        h = _tokens(hidden_states)  # [N, D]
        normed = compiled(rms_norm)(h, norm1.weight, norm1.variance_epsilon)
        attn, _ = attention(hidden_states=normed.view_as(hidden_states), **kwargs)  # [B, T, D]
        dense = (_tokens(attn), norm2.weight, norm2.variance_epsilon, mlp.gate_proj.weight, mlp.up_proj.weight,
                 mlp.down_proj.weight)
        if adapter is None:
            return compiled(dense_block)(h, *dense).view_as(hidden_states)
        out, logits, gates = compiled(expert_block)(h, *dense, adapter.router.weight, *adapter.stacked_weights(),
                                                    adapter.config)
        adapter.last_router_logits = logits.view(*hidden_states.shape[:-1], -1)  # [B, T, E], as MoEAdapter keeps it
        adapter.last_routing = gates.view_as(adapter.last_router_logits)
        return out.view_as(hidden_states)

    return forward


def _plain_mlp(mlp: nn.Module | None) -> bool:
    """A Llama MLP as :func:`feed_forward` computes it: SiLU, three bias-free plain linear layers."""
    return (getattr(getattr(mlp, "config", None), "hidden_act", None) == "silu"
            and all(type(getattr(mlp, p, None)) is nn.Linear and getattr(mlp, p).bias is None
                    for p in ("gate_proj", "up_proj", "down_proj")))


def compilable(layer: nn.Module, hidden_size: int, device: torch.device) -> bool:
    """Whether :func:`compile_model` computes ``layer``: a Llama-family decoder layer with RMSNorms and a plain Llama
    MLP, alone or under gated experts. Anything else (a LoRA-wrapped or quantised projection, grouped experts)
    keeps its own forward."""
    if type(layer).__name__ not in DECODER_LAYERS:
        return False
    if not all(type(n).__name__ in RMS_NORMS for n in (layer.input_layernorm, layer.post_attention_layernorm)):
        return False
    ffn = layer.mlp
    if isinstance(ffn, MoEFeedForward):
        return _plain_mlp(ffn.dense_mlp) and uses_gated_experts(ffn.moe_adapter.config, hidden_size, device)
    return _plain_mlp(ffn)


def _shadow(module: nn.Module, forward) -> None:
    """Set ``forward`` on the instance (in front of its class's), marked as this module's."""
    forward.openrag_compiled = True
    module.forward = forward


def _shadowed(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), "openrag_compiled", False)


def compile_model(model: nn.Module) -> int:
    """Run ``model``'s decoder layers (inference) through the compiled functions and compile them now (a forward of
    one token, under ``torch.inference_mode`` as the engine runs), so that the cost is paid here rather than by
    the first question. Returns how many layers were replaced (see :func:`compilable`)."""
    config = model.config.get_text_config()
    device = next(model.parameters()).device
    count = 0
    for layer in decoder_layers(model):
        if compilable(layer, config.hidden_size, device):
            _shadow(layer, _layer_forward(layer))
            count += 1
    if count and not model.training:
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    return count


def is_compiled(model: nn.Module) -> bool:
    return any(_shadowed(module) for module in model.modules())
