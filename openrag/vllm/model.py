"""The Open-RAG architecture as a vLLM model: vLLM's own Llama with adapter experts added to each MLP's output.

Only the MLP changes (docs/method.md section 1: ``out = y + experts(x, y)``, the router reading the MLP input ``x``,
the experts its output ``y``); attention, the KV cache, tensor parallelism and weight loading stay vLLM's.
The dense projections keep their checkpoint names (``mlp.gate_proj``/``up_proj`` stacked by vLLM as
``gate_up_proj``, ``mlp.down_proj``) and the experts load from ``mlp.moe_adapter.*``, the released merged
layout. Under tensor parallelism ``x`` and ``y`` are whole on every rank (``down_proj`` reduces its output),
so each rank holds all the experts and computes the same term.

Registered with vLLM by the plugin in ``openrag.vllm`` (entry point ``vllm.general_plugins``).
"""

from __future__ import annotations

from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP

from ..model.layouts import released_moe_config
from .experts import GatedExperts


class OpenRAGMLP(nn.Module):
    """A Llama MLP plus the experts. It adopts the dense MLP's modules under their own names, so that the
    dense weights load where vLLM's Llama loads them."""

    def __init__(self, dense: LlamaMLP, experts: GatedExperts):
        super().__init__()
        self.gate_up_proj = dense.gate_up_proj
        self.down_proj = dense.down_proj
        self.act_fn = dense.act_fn
        self.moe_adapter = experts

    def forward(self, x):
        y = LlamaMLP.forward(self, x)  # [N, D] the dense FFN, computed by vLLM's own code
        return y + self.moe_adapter(x, y)


class OpenRAGDecoderLayer(LlamaDecoderLayer):
    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config=None, **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, config=config, **kwargs)
        config = config or vllm_config.model_config.hf_config
        moe = released_moe_config(config)
        if moe is None:
            raise ValueError("config.json names the OpenRAGForCausalLM architecture but lacks num_experts, topk, "
                             "adapter_dim or moe_scaling; write the folder with openrag.vllm.folder.vllm_folder")
        self.mlp = OpenRAGMLP(self.mlp, GatedExperts(config.hidden_size, moe))  # in vLLM's default dtype


class OpenRAGForCausalLM(LlamaForCausalLM):
    """vLLM's LlamaForCausalLM whose decoder layers carry the experts."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=OpenRAGDecoderLayer)
