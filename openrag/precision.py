"""Which floating-point precision this machine computes fast in, and why.

bf16 matrix products can be fast on a CPU only where it multiplies bf16 natively: x86 flags ``avx512_bf16``
(Cooper Lake, Sapphire Rapids, Zen 4 and later) or ``amx_bf16`` (Sapphire Rapids and later, where the
hypervisor passes AMX through); elsewhere torch emulates them and they are many times slower. The flag is
not enough: on a Sapphire Rapids guest with ``avx512_bf16`` but no AMX, bf16 products measured 0.75x float32
(BENCHMARKS.md, "Training precision"). So bf16 is chosen where the flags allow it *and* a product of a
transformer's shape, timed once per process (about a tenth of a second), runs at least
:data:`BF16_MIN_SPEEDUP` times faster in bf16 than in float32. CUDA GPUs take bf16 wherever torch supports it.

Inference follows the same judgement (:func:`cpu_inference_dtype`): bf16 where it is the fast choice, float32
elsewhere; on held-out questions bf16 kept EM, retrieval decisions and relevance AUC within noise of float32
(BENCHMARKS.md, "bf16 against float32 at inference").

``OPENRAG_CPU_BF16=1`` (or ``0``) overrides both checks: for a CPU whose flags are hidden (some virtual
machines) and for tests of both paths on one machine.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")  # what --dtype may name (ask, eval, serve, data build's critic)
DTYPE_HELP = ("the model's weights and compute (default: on the CPU bf16 where its bf16 products are fast, else float32 where "
              "it fits in memory; on a GPU the checkpoint's own)")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_SPEEDUP = 1.2  # bf16 products must beat float32 by this much to be worth their rounding
PROBE_SHAPE = (1024, 576, 1536)  # tokens x hidden -> MLP width, as in SmolLM2's feed-forward


def dtype_name(dtype) -> str:
    """A torch dtype as --dtype and the records spell it: torch.bfloat16 -> "bfloat16" (a name stays as it is)."""
    return str(dtype).removeprefix("torch.")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_flags() -> list[str]:
    return sorted(f for f in NATIVE_BF16_FLAGS if f in cpu_flags())


@functools.cache
def bf16_matmul_speedup(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 3) -> float:
    """How many times faster a bf16 product of ``shape`` runs than a float32 one here (best of ``repeats``)."""
    import time

    import torch

    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = a.to(dtype), b.to(dtype)
        x @ w  # warm-up: kernel choice, first-touch allocation
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ w
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.float32] / best[torch.bfloat16]


@dataclass(frozen=True)
class CpuBf16:
    """Whether bf16 products are the fast choice on this CPU, and the sentence that says why."""

    fast: bool
    why: str


def cpu_bf16() -> CpuBf16:
    override = os.environ.get("OPENRAG_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return CpuBf16(override == "1", f"OPENRAG_CPU_BF16={override}")
    return _judged_cpu_bf16()


@functools.cache
def _judged_cpu_bf16() -> CpuBf16:
    flags = native_bf16_flags()
    if not flags:
        return CpuBf16(False, "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in its flags): its bf16 products are emulated "
                              "and many times slower")
    speedup = bf16_matmul_speedup()
    said = f"{', '.join(flags)}; a bf16 product measured {speedup:.2f}x float32's speed here"
    if speedup < BF16_MIN_SPEEDUP:
        return CpuBf16(False, f"bf16 is not faster on this CPU ({said}, below the {BF16_MIN_SPEEDUP}x that pays for its rounding)")
    return CpuBf16(True, said)


def cpu_inference_dtype() -> tuple[str, str]:
    """The dtype a model computes in on this CPU when none is asked for, and the sentence that says why."""
    cpu = cpu_bf16()
    if cpu.fast:
        return "bfloat16", f"bf16 ({cpu.why}; --dtype float32 for float32's answers)"
    return "float32", f"float32 ({cpu.why})"


@dataclass(frozen=True)
class TrainingPrecision:
    """What ``--bf16``/``--fp16`` become on this machine, and the sentence that says why."""

    bf16: bool
    fp16: bool
    reason: str


def training_precision(bf16: bool, fp16: bool, cuda: bool) -> TrainingPrecision:
    """Mixed precision as asked on a GPU; on the CPU bf16 autocast only where the CPU has native bf16.

    Under bf16 autocast the trainable weights stay float32 (the master copy Adam updates); the matrix
    products run in bf16. CPU fp16 autocast has no fast kernels anywhere, so it always falls back.
    """
    if cuda or not (bf16 or fp16):
        return TrainingPrecision(bf16, fp16, "as asked")
    if fp16:
        return TrainingPrecision(False, False, "--fp16 on the CPU: there are no fast fp16 kernels for it; training in float32 "
                                               "(use --bf16 True on a CPU with fast bf16)")
    cpu = cpu_bf16()
    if cpu.fast:
        return TrainingPrecision(True, False, f"bf16 autocast on the CPU ({cpu.why}): matrix products in bf16, "
                                              "trainable weights and optimizer state in float32")
    return TrainingPrecision(False, False, f"--bf16 asked for, but {cpu.why}; training in float32")
