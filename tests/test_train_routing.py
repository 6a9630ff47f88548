"""Expert load and the load-balancing loss, against values worked out by hand / plain Python."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from openrag.model.experts import MoEConfig
from openrag.training.routing import LoadMeter, expert_counts, load_balancing_loss
from openrag.training.trainer import format_expert_load, format_log


def _adapter(logits, num_experts=4, topk=2):
    return SimpleNamespace(last_router_logits=torch.tensor(logits, dtype=torch.float32), config=MoEConfig(num_experts, topk, 8, 0.25))


# Router logits of one layer: batch 1, 3 tokens, 4 experts; the third token is padding.
LOGITS = [[[4.0, 3.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [9.0, 9.0, 9.0, 9.0]]]
MASK = torch.tensor([[1, 1, 0]])


def test_expert_counts_skip_padding():
    counts = expert_counts([_adapter(LOGITS)], MASK)
    # token 0 -> experts 0, 1; token 1 -> experts 1, 2
    assert counts.tolist() == [[1, 2, 1, 0]]


def test_load_balancing_loss_golden():
    def softmax(row):
        z = [math.exp(v) for v in row]
        return [v / sum(z) for v in z]

    p0, p1 = softmax(LOGITS[0][0]), softmax(LOGITS[0][1])
    share = [1 / 4, 2 / 4, 1 / 4, 0]  # routings per expert / (2 tokens * top-2)
    mean_p = [(a + b) / 2 for a, b in zip(p0, p1)]
    expected = 4 * sum(f * p for f, p in zip(share, mean_p))
    got = load_balancing_loss([_adapter(LOGITS)], MASK)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_is_one_when_balanced_and_averages_layers():
    uniform = [[[0.0, 0.0]] * 4]
    balanced = _adapter([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]], num_experts=2, topk=1)
    assert load_balancing_loss([_adapter(uniform, 2, 1)], None).item() == pytest.approx(1.0)
    skewed = _adapter([[[5.0, 0.0]] * 4], num_experts=2, topk=1)
    one, two = load_balancing_loss([balanced], None), load_balancing_loss([skewed], None)
    assert two > one
    assert load_balancing_loss([balanced, skewed], None).item() == pytest.approx((one.item() + two.item()) / 2)


def test_load_balancing_loss_gradient_reaches_the_router_logits():
    logits = torch.tensor(LOGITS, requires_grad=True)
    adapter = SimpleNamespace(last_router_logits=logits, config=MoEConfig(4, 2, 8, 0.25))
    load_balancing_loss([adapter], MASK).backward()
    assert logits.grad[0, :2].abs().sum() > 0 and logits.grad[0, 2].abs().sum() == 0


def test_meter_and_console_lines():
    meter = LoadMeter()
    meter.add([_adapter(LOGITS)], MASK, MASK.sum())
    meter.add([_adapter(LOGITS)], MASK, MASK.sum())
    assert meter.counts.tolist() == [[2, 4, 2, 0]] and float(meter.tokens) == 4
    logs = {"loss": 1.5, "learning_rate": 2e-4, "tokens_per_second": 1234.0}
    logs.update({f"expert_load/layer_00/expert_{e}": s for e, s in enumerate([0.25, 0.5, 0.25, 0.0])})
    line = format_log(logs, 3, 10)
    assert line.startswith("step 3/10 | loss 1.5000") and "1,234 tokens/s" in line and "expert_load" not in line
    table = format_expert_load(logs)
    assert "layer  0:  25.0  50.0  25.0   0.0" in table
