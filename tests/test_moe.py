"""The injected experts against an independent reference written from SPEC section 1."""

import copy

import pytest
import torch
import torch.nn.functional as F

from openrag import inject_moe, moe_config_of, remove_moe
from openrag.model.experts import MoEFeedForward, moe_adapters


def randomise_experts(model, seed=1):
    """Non-zero up projections (they start at zero) so the expert term is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in moe_adapters(model):
            for expert in adapter.experts.values():
                expert.adapter_up.weight.copy_(torch.randn(expert.adapter_up.weight.shape, generator=g) * 0.3)
            adapter.router.weight.copy_(torch.randn(adapter.router.weight.shape, generator=g))


def reference_logits(dense, injected, input_ids, topk, scaling):
    """Plain HF Llama plus forward hooks that add SPEC's expert term token by token, in a Python loop."""
    hooks = []
    for layer, moe_layer in zip(dense.model.layers, injected.model.layers):
        adapter = moe_layer.mlp.moe_adapter
        router = adapter.router.weight  # [E, D]
        downs = [e.adapter_down.weight for e in adapter.experts.values()]  # each [r, D]
        ups = [e.adapter_up.weight for e in adapter.experts.values()]  # each [D, r]

        def hook(module, inputs, y, router=router, downs=downs, ups=ups):
            x = inputs[0]
            out = y.clone()
            for b in range(x.shape[0]):
                for t in range(x.shape[1]):
                    logits = router @ x[b, t]
                    top_w, top_i = torch.topk(logits, topk)
                    w = torch.softmax(top_w, dim=0)
                    for weight, j in zip(w, top_i):
                        h = y[b, t]
                        expert = ups[j] @ F.gelu(downs[j] @ h, approximate="none")
                        out[b, t] = out[b, t] + weight * scaling * expert
            return out

        hooks.append(layer.mlp.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return dense(input_ids).logits
    finally:
        for h in hooks:
            h.remove()


def test_fresh_injection_keeps_dense_logits(tiny_llama):
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        before = tiny_llama(ids).logits
        inject_moe(tiny_llama, num_experts=4, topk=2, adapter_dim=8, moe_scaling=0.25)
        after = tiny_llama(ids).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("topk", [1, 2])
def test_injected_logits_match_reference(tiny_llama, topk):
    dense = copy.deepcopy(tiny_llama)
    inject_moe(tiny_llama, num_experts=4, topk=topk, adapter_dim=8, moe_scaling=0.25)
    randomise_experts(tiny_llama)
    tiny_llama.eval()
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        ours = tiny_llama(ids).logits
    ref = reference_logits(dense, tiny_llama, ids, topk, 0.25)
    assert not torch.allclose(ref, dense(ids).logits, atol=1e-3)  # the experts do change the output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_injection_records_config_and_unloads(tiny_llama):
    dense_ref = copy.deepcopy(tiny_llama)
    inject_moe(tiny_llama, num_experts=3, topk=1, adapter_dim=4, moe_scaling=0.5)
    assert tiny_llama.config.num_experts == 3 and tiny_llama.config.topk == 1
    assert moe_config_of(tiny_llama).adapter_dim == 4
    assert all(isinstance(layer.mlp, MoEFeedForward) for layer in tiny_llama.model.layers)
    adapter = tiny_llama.model.layers[0].mlp.moe_adapter
    assert adapter.experts["expert_0"].adapter_up.weight.abs().sum() == 0
    assert adapter.experts["expert_0"].adapter_down.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="already has experts"):
        inject_moe(tiny_llama, 3, 1, 4, 0.5)
    remove_moe(tiny_llama)
    assert moe_config_of(tiny_llama) is None
    assert tiny_llama.state_dict().keys() == dense_ref.state_dict().keys()


def test_bad_settings_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="topk"):
        inject_moe(tiny_llama, num_experts=2, topk=3, adapter_dim=4, moe_scaling=0.25)


def test_expert_keys_follow_the_released_layout(tiny_llama):
    inject_moe(tiny_llama, num_experts=2, topk=1, adapter_dim=4, moe_scaling=0.25)
    keys = set(tiny_llama.state_dict())
    assert "model.layers.1.mlp.moe_adapter.router.weight" in keys
    assert "model.layers.0.mlp.moe_adapter.experts.expert_1.adapter_down.weight" in keys
    assert "model.layers.0.mlp.moe_adapter.experts.expert_1.adapter_up.weight" in keys


def test_routing_gates_sum_to_one_over_topk(tiny_llama):
    inject_moe(tiny_llama, num_experts=5, topk=2, adapter_dim=4, moe_scaling=0.25)
    with torch.no_grad():
        tiny_llama(torch.randint(0, 128, (3, 6)))
    gates = tiny_llama.model.layers[0].mlp.moe_adapter.last_routing  # [B, T, E]
    assert gates.shape == (3, 6, 5)
    assert torch.all((gates > 0).sum(-1) == 2)
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 6))


def test_expert_gradients_match_a_per_token_reference():
    from openrag.model.experts import MoEAdapter, MoEConfig

    torch.manual_seed(0)
    adapter = MoEAdapter(6, MoEConfig(num_experts=3, topk=2, adapter_dim=4, moe_scaling=0.5, dropout=0.0))
    for expert in adapter.experts.values():
        torch.nn.init.normal_(expert.adapter_up.weight)
    x, y = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    adapter(x, y).square().sum().backward()
    ours = {n: p.grad.clone() for n, p in adapter.named_parameters()}
    adapter.zero_grad()
    total = 0
    for b in range(2):
        for t in range(5):
            w, idx = torch.topk(adapter.router.weight @ x[b, t], 2)
            w = torch.softmax(w, 0)
            term = sum(
                w[i] * 0.5 * (adapter.experts[f"expert_{j}"].adapter_up.weight
                              @ F.gelu(adapter.experts[f"expert_{j}"].adapter_down.weight @ y[b, t]))
                for i, j in enumerate(idx.tolist())
            )
            total = total + term.square().sum()
    total.backward()
    for name, param in adapter.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, atol=1e-5, rtol=1e-5, msg=name)
