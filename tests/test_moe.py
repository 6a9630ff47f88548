"""The injected experts against an independent reference written from docs/method.md section 1."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from openrag import inject_moe, moe_config_of, remove_moe
from openrag.model import experts as experts_module
from openrag.model.experts import MoEAdapter, MoEConfig, MoEFeedForward, moe_adapters


def randomise_experts(model, seed=1):
    """Non-zero up projections (they start at zero) so the expert term is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in moe_adapters(model):
            for expert in adapter.experts.values():
                expert.adapter_up.weight.copy_(torch.randn(expert.adapter_up.weight.shape, generator=g) * 0.3)
            adapter.router.weight.copy_(torch.randn(adapter.router.weight.shape, generator=g))


def reference_logits(dense, injected, input_ids, topk, scaling):
    """Plain HF Llama plus forward hooks that add the expert term (docs/method.md section 1) token by token, in a
    Python loop."""
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


def random_adapter(hidden=6, num_experts=3, topk=2, adapter_dim=4, seed=0):
    """An adapter without dropout whose every expert has a term (adapter_up starts at zero)."""
    torch.manual_seed(seed)
    adapter = MoEAdapter(hidden, MoEConfig(num_experts, topk, adapter_dim, moe_scaling=0.5, dropout=0.0))
    for expert in adapter.experts.values():
        torch.nn.init.normal_(expert.adapter_up.weight)
    return adapter


def spec_term(adapter, x, y):
    """docs/method.md section 1, token by token: x, y [..., D] -> sum over the k chosen j of w_j * moe_scaling *
    up_j(GELU(down_j(y))), w the softmax over the chosen router logits."""
    cfg, experts = adapter.config, list(adapter.experts.values())
    rows = []
    for xt, yt in zip(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])):
        top_logits, idx = torch.topk(adapter.router.weight @ xt, cfg.topk)
        w = torch.softmax(top_logits, 0)
        rows.append(sum(w[i] * cfg.moe_scaling * (experts[j].adapter_up.weight @ F.gelu(experts[j].adapter_down.weight @ yt))
                        for i, j in enumerate(idx.tolist())))
    return torch.stack(rows).view_as(y)


@pytest.fixture
def gated_everywhere(monkeypatch):
    """Inference takes the gated path whatever GATED_MAX_WIDTH is tuned to."""
    monkeypatch.setitem(experts_module.GATED_MAX_WIDTH, "cpu", math.inf)


def test_expert_gradients_match_a_per_token_reference():
    adapter = random_adapter()
    x, y = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    adapter(x, y).square().sum().backward()
    ours = {n: p.grad.clone() for n, p in adapter.named_parameters()}
    adapter.zero_grad()
    spec_term(adapter, x, y).square().sum().backward()
    for name, param in adapter.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("num_experts,topk", [(1, 1), (3, 1), (3, 2), (8, 1), (8, 2)])
def test_inference_path_matches_spec_and_training(gated_everywhere, num_experts, topk):
    adapter = random_adapter(hidden=12, num_experts=num_experts, topk=topk)
    x, y = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    training = adapter(x, y)  # train mode, with gradients: the grouped path
    routing, logits = adapter.last_routing, adapter.last_router_logits
    with torch.no_grad():
        ours = adapter.eval()(x, y)
        torch.testing.assert_close(ours, spec_term(adapter, x, y), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, training.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.last_routing, routing)
    torch.testing.assert_close(adapter.last_router_logits, logits.detach())


def test_a_bf16_model_routes_in_float32():
    """Outside autocast a bf16 adapter's router logits are the float32 product of its bf16 input and weights: bf16
    logits tie and flip the top-k choice (the bundled model in bf16 changed 6 of 30 answers against float32 with
    them, 2 without: BENCHMARKS.md). Under autocast (training) the router product stays bf16, as every other."""
    adapter = random_adapter(hidden=12, num_experts=8, topk=2).to(torch.bfloat16).eval()
    x, y = torch.randn(3, 12, dtype=torch.bfloat16), torch.randn(3, 12, dtype=torch.bfloat16)
    with torch.no_grad():
        out = adapter(x, y)
    reference = x.float() @ adapter.router.weight.float().T  # [N, E]
    assert out.dtype == torch.bfloat16 and adapter.last_router_logits.dtype == torch.float32
    torch.testing.assert_close(adapter.last_router_logits, reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adapter.float().train()(x.float(), y.float())
    assert adapter.last_router_logits.dtype == torch.bfloat16


def test_gated_path_only_at_inference(monkeypatch):
    calls, real = [], experts_module.gated_expert_term

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(experts_module, "gated_expert_term", spy)
    adapter = random_adapter(hidden=12, num_experts=3, adapter_dim=4)  # 3 * 4 <= 12: gated at the default width
    x, y = torch.randn(4, 12), torch.randn(4, 12)

    def gated(grad=False):
        calls.clear()
        with torch.set_grad_enabled(grad):
            adapter(x, y)
        return bool(calls)

    assert not gated()  # train mode keeps the grouped path and its dropout, with or without gradients
    adapter.eval()
    assert not gated(grad=True)  # the expert weights want gradients
    assert gated()
    adapter.requires_grad_(False)
    assert gated(grad=True)  # gradients for the inputs only
    monkeypatch.setitem(experts_module.GATED_MAX_WIDTH, "cpu", 0.5)
    assert not gated()  # wider experts than the limit
    assert not experts_module.uses_gated_experts(adapter.config, 12, torch.device("cuda"))  # not measured there


def test_stacked_weights_follow_weight_changes(gated_everywhere):
    adapter = random_adapter(hidden=12, num_experts=2, topk=2).eval()
    x, y = torch.randn(3, 12), torch.randn(3, 12)
    with torch.no_grad():
        before = adapter(x, y)
        assert adapter.stacked_weights()[0] is adapter.stacked_weights()[0]  # kept between forwards

        adapter.experts["expert_1"].adapter_up.weight.mul_(-2)  # in place, as an optimizer step
        assert not torch.allclose(adapter(x, y), before)
        torch.testing.assert_close(adapter(x, y), spec_term(adapter, x, y), atol=1e-5, rtol=1e-5)

        adapter.load_state_dict(random_adapter(hidden=12, num_experts=2, topk=2, seed=1).state_dict())
        torch.testing.assert_close(adapter(x, y), spec_term(adapter, x, y), atol=1e-5, rtol=1e-5)

        adapter.experts["expert_0"].adapter_down.weight = torch.nn.Parameter(torch.randn(4, 12))  # replaced
        torch.testing.assert_close(adapter(x, y), spec_term(adapter, x, y), atol=1e-5, rtol=1e-5)
