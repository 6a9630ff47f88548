"""Shared fixtures: a tiny random Llama (built from a config, no files) and the real bundled SmolLM2."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Reference values here are float32 computations, so every machine runs the float32 path (a CPU with fast bf16
# would otherwise compute the bundled model in bf16 by default): tests of the bf16 choice set the variable themselves.
os.environ.setdefault("OPENRAG_CPU_BF16", "0")


def load_script(name: str):
    """A script of ``scripts/`` (not a package module) imported as a module, for its tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where torch sees a CUDA device and are skipped elsewhere (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def make_tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    return model.eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def smollm2_folder():
    """Folder of the converted bundled base (converted once per cache)."""
    from openrag.model.bundled import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2(smollm2_folder):
    """The real bundled base, dense, float32 on the CPU. Session-scoped: do not modify it in a test."""
    from openrag import load_model

    return load_model(str(smollm2_folder), device="cpu")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_folder):
    """The bundled base's real tokenizer (loads in well under a second). Copy it before adding tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


def make_tiny_llama_for(tokenizer, seed: int = 0, **overrides):
    """A tiny random Llama whose vocabulary matches a real tokenizer (embeddings [len(tokenizer), 32])."""
    fields = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return make_tiny_llama(seed, **{**fields, **overrides})


@pytest.fixture(scope="module")
def tiny_pair(smollm2_tokenizer):
    """(tiny random Llama, a copy of the real tokenizer with the reflection tokens): junk answers, real ids."""
    import copy

    from openrag.model.reflection import add_reflection_tokens

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    add_reflection_tokens(None, tokenizer)
    return make_tiny_llama_for(tokenizer, max_position_embeddings=512), tokenizer


# -- a real `openrag serve` process (tests/test_serve_e2e.py, tests/test_serve_abuse.py) ---------------

SERVER_STARTUP_SECONDS = 180  # imports and model loading on a busy two-core machine


def save_tiny_served_model(smollm2_folder, folder, max_positions: int):
    """A tiny random Llama with the real tokenizer and the reflection tokens, saved for a server to load."""
    from transformers import AutoTokenizer

    from openrag.model.reflection import add_reflection_tokens

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = make_tiny_llama_for(tokenizer, max_position_embeddings=max_positions)
    add_reflection_tokens(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_folder, log_path, *args: str, preexec_fn=None):
    """``openrag serve`` on a free loopback port, keyless, until it answers /health; yields its URL and
    stops it (SIGINT, then SIGKILL) on exit. A server that exits or never comes up fails the test with its log."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "openrag", "serve", "--model_name", str(model_folder), "--port", str(port),
               "--device", "cpu", "--log_level", "warning", *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
                                   env={**os.environ, "OPENRAG_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"openrag serve exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"openrag serve did not come up in {SERVER_STARTUP_SECONDS} s:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
