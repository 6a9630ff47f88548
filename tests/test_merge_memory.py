"""Merging and loading hold the model once: a 7B checkpoint merges and answers on a 24 GB CPU machine only if
neither keeps a second full copy (benchmarks/bench_7b_shape.py measures that size itself).

A bf16 checkpoint of about 120 MB in the 7B's proportions (the benchmark's own build, at a small shape) is merged and
then loaded in a fresh process, whose anonymous memory (RssAnon: what it must have, not the checkpoint files it maps)
is sampled every 2 ms. A second copy of the model, e.g. the whole base in float32 or every expert tensor read before
loading, costs at least the merged model's size again."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ONE_COPY = 1.5  # the model once, plus float32 embeddings and a LoRA matrix at a time; a second copy is 2 or more

MEASURE = r"""
import gc, json, sys, threading, time
from pathlib import Path
import torch
from peft import PeftModel  # noqa: F401  imported before the baseline: what a merge imports is not what it holds
from peft.tuners.lora import LoraLayer  # noqa: F401
from peft.import_utils import is_bnb_available
if is_bnb_available():  # peft >= 0.22 imports bitsandbytes (and with it torch.compile's inductor, some 40 MB) only
    import peft.tuners.lora.bnb  # noqa: F401  when it first wraps a layer, i.e. inside the merge; 0.21 did at `import peft`
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401
from openrag import load_model
from openrag.model.merge import merge

def anonymous():
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("RssAnon:"))

peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], anonymous())
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()

def growth(step):
    gc.collect()
    time.sleep(0.05)
    peak[0] = start = anonymous()
    kept = step()  # held while the sampler catches up
    time.sleep(0.05)
    return peak[0] - start

checkpoint, out = sys.argv[1:3]
merged = growth(lambda: merge(checkpoint, output_dir=out))
loaded = growth(lambda: load_model(out, dtype=torch.bfloat16, device="cpu"))
print(json.dumps({"merge": merged, "load": loaded}))
"""


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_7b_shape", ROOT / "benchmarks" / "bench_7b_shape.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclasses
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RssAnon from /proc (Linux)")
def test_merge_and_load_hold_the_model_once(tmp_path):
    bench = bench_module()
    bench.build(bench.Shape(hidden=512, intermediate=1376, layers=16, heads=8, vocab=1000, experts=8, adapter_dim=64, lora_r=8), tmp_path)
    out = tmp_path / "merged"
    # glibc: blocks of 64 KB or more mapped and unmapped one by one, so that memory freed by the merge is not
    # reused unseen by the load, and what is held is what RssAnon shows
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "checkpoint"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    growth = json.loads(done.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))  # the merged model, bf16 with its experts
    assert size > 100e6
    assert growth["merge"] < ONE_COPY * size, (growth, size)
    assert growth["load"] < ONE_COPY * size, (growth, size)


def test_on_the_cpu_float32_only_where_it_fits(monkeypatch):
    """Llama-2-7B with its experts: 7.8B parameters, 31 GB in float32, on a machine with 20 GB available."""
    import torch

    from openrag.model import loading

    cpu, float32_7b = torch.device("cpu"), 4 * 7_812_000_000
    monkeypatch.setattr(loading, "available_memory", lambda: 20 * 1024**3)
    assert loading.default_dtype(cpu, "bfloat16", float32_7b) == torch.bfloat16
    assert loading.default_dtype(cpu, "float16", float32_7b) == torch.float16
    assert loading.default_dtype(cpu, "bfloat16", 4 * 135_000_000) == torch.float32  # the bundled model
    assert loading.default_dtype(cpu, "bfloat16", None) == torch.float32  # size unknown (pytorch_model.bin)
    assert loading.default_dtype(torch.device("cuda"), "bfloat16", 4 * 135_000_000) == torch.bfloat16
    monkeypatch.setattr(loading, "available_memory", lambda: None)
    assert loading.default_dtype(cpu, "bfloat16", float32_7b) == torch.float32
