"""How openrag chooses bf16 on the CPU: by the CPU's flags and a timed product, each reason stated."""

from __future__ import annotations

import pytest

from openrag import precision


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU's flags and its measured bf16 speed-up by hand; no override from the environment."""
    monkeypatch.delenv("OPENRAG_CPU_BF16", raising=False)
    precision._judged_cpu_bf16.cache_clear()

    def set_cpu(flags: set[str], speedup: float):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: speedup)
        precision._judged_cpu_bf16.cache_clear()

    yield set_cpu
    precision._judged_cpu_bf16.cache_clear()


def test_no_bf16_flag_trains_float32_and_says_why(cpu):
    cpu({"avx2", "fma"}, 3.0)  # a fast product cannot make up for missing flags (it would be emulated)
    chosen = precision.training_precision(True, False, cuda=False)
    assert (chosen.bf16, chosen.fp16) == (False, False)
    assert "no native bf16" in chosen.reason and "float32" in chosen.reason


def test_flag_with_a_slow_product_trains_float32(cpu):
    cpu({"avx512f", "avx512_bf16"}, 0.95)
    chosen = precision.training_precision(True, False, cuda=False)
    assert not chosen.bf16 and "0.95x" in chosen.reason and "avx512_bf16" in chosen.reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_flag_with_a_fast_product_trains_bf16(cpu, flag):
    cpu({"avx512f", flag}, 2.2)
    chosen = precision.training_precision(True, False, cuda=False)
    assert chosen.bf16 and not chosen.fp16 and flag in chosen.reason and "float32" in chosen.reason  # master weights


def test_fp16_on_the_cpu_and_no_request_and_cuda(cpu):
    cpu({"amx_bf16"}, 2.5)
    def chosen(*args, **kwargs):
        out = precision.training_precision(*args, **kwargs)
        return out.bf16, out.fp16

    assert chosen(False, True, cuda=False) == (False, False)
    assert chosen(False, False, cuda=False) == (False, False)
    assert chosen(True, False, cuda=True) == (True, False)  # a GPU takes what it is asked


def test_environment_overrides_both_checks(cpu, monkeypatch):
    cpu(set(), 0.1)
    monkeypatch.setenv("OPENRAG_CPU_BF16", "1")
    assert precision.training_precision(True, False, cuda=False).bf16
    monkeypatch.setenv("OPENRAG_CPU_BF16", "0")
    cpu({"amx_bf16"}, 9.0)
    assert not precision.training_precision(True, False, cuda=False).bf16


def test_the_probe_times_real_products():
    speedup = precision.bf16_matmul_speedup((64, 32, 48), repeats=1)
    assert speedup > 0 and speedup == speedup  # a ratio of two measured times, not NaN


def test_inference_computes_in_bf16_only_where_it_is_fast(cpu, monkeypatch, smollm2_folder, caplog):
    """A checkpoint loaded without --dtype: bf16 on a CPU whose bf16 products are fast, float32 elsewhere, said why."""
    import logging

    import torch

    from openrag.model import loading

    small = 4 * 135_000_000
    cpu({"avx512_bf16"}, 2.3)
    with caplog.at_level(logging.INFO, logger="openrag.model.loading"):
        assert loading.default_dtype(torch.device("cpu"), "float32", small) == torch.bfloat16
    assert "avx512_bf16" in caplog.text and "--dtype float32" in caplog.text
    model, _ = loading.load_model(str(smollm2_folder))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    cpu({"avx512_bf16"}, 0.9)  # the flag without the speed (a Sapphire Rapids guest without AMX)
    assert loading.default_dtype(torch.device("cpu"), "bfloat16", small) == torch.float32
    cpu({"avx2"}, 3.0)
    assert loading.default_dtype(torch.device("cpu"), "bfloat16", small) == torch.float32
    assert precision.cpu_inference_dtype()[0] == "float32" and "no native bf16" in precision.cpu_inference_dtype()[1]
    assert loading.default_dtype(torch.device("cuda"), "float16", small) == torch.float16  # a GPU: the checkpoint's own
