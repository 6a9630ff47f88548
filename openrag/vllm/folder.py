"""The folder vLLM loads with the Open-RAG architecture, written once per checkpoint and dtype.

vLLM reads a Hugging Face folder: ``config.json`` (its ``architectures`` picks the model class), safetensors
and the tokenizer. From each checkpoint openrag loads (openrag.model.layouts names the layouts):

* adapter layout (the bundled ``default`` included): merged by :func:`openrag.model.merge.merge` (LoRA folded
  into the dense weights, reflection-token rows in place, experts beside), then named for vLLM;
* merged layout (``openrag merge`` output, the released checkpoints): its safetensors linked, not copied,
  beside a ``config.json`` naming :data:`~openrag.vllm.ARCHITECTURE` (``model_type: llama`` for a released
  config whose own type only its remote code knows) and an index that lists the expert tensors too;
* dense with the reflection tokens: used as it is, by vLLM's own class for its architecture;
* without the reflection tokens: loaded, given untrained ones as ``OpenRAG.from_pretrained`` gives them, saved.

Written folders go to ``$OPENRAG_CACHE/vllm/NAME-FINGERPRINT``; the fingerprint covers the source's files
(names, sizes, times; an adapter's base too) and the dtype, so an unchanged checkpoint is written once and a
changed one gets a new folder. ``openrag_vllm.json`` in it records the source and what the answering side needs
(the prompt format an adapter recorded, whether the reflection tokens are untrained).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import safe_open

from ..bundled_names import DEFAULT_NAME
from ..model import layouts
from ..model.bundled import cache_dir
from ..model.loading import load_pretrained, read_config, read_tokenizer, resolve_folder
from ..model.reflection import add_reflection_tokens
from . import ARCHITECTURE

INFO_FILE = "openrag_vllm.json"
FORMAT_VERSION = 1  # bump when the written folder changes, so that old ones are not reused
LLAMA_TYPES = ("llama", "mistral")  # the families vLLM runs with its Llama classes, and so with the experts
_SKIPPED = re.compile(r"(^config\.json$|\.safetensors\.index\.json$|\.(bin|pt|pth|gguf)$|^" + re.escape(INFO_FILE) + "$)")


@dataclass
class VLLMFolder:
    """A folder vLLM loads, and what the checkpoint it came from says about answering with it."""

    path: Path
    prompt_format: str | None = None  # the prompts the model was trained with, when its checkpoint recorded them
    untrained_tokens: bool = False  # the reflection tokens were added here, untrained


def vllm_folder(name_or_path: str = DEFAULT_NAME, dtype: str = "auto", output_dir: str | Path | None = None) -> VLLMFolder:
    """The vLLM-loadable folder of any checkpoint ``openrag.load_model`` reads, written if it must be.

    ``dtype``: of the weights written where a checkpoint is merged or re-saved (``auto``: the checkpoint's;
    the CPU backend asks for the dtype the built-in engine computes in there, ``precision.cpu_inference_dtype``).
    ``output_dir``: where to write instead of the cache (a folder written there before is reused when its
    fingerprint matches)."""
    source = resolve_folder(str(name_or_path))
    if _names_architecture(source):
        return _read_info(source)
    kind = _kind(source)
    if kind == "dense":
        return VLLMFolder(source)
    fingerprint = _fingerprint(source, kind, dtype)
    target = Path(output_dir).expanduser() if output_dir else cache_dir() / "vllm" / f"{_slug(str(name_or_path))}-{fingerprint}"
    if (target / INFO_FILE).is_file() and json.loads((target / INFO_FILE).read_text()).get("fingerprint") == fingerprint:
        return _read_info(target)
    if target.exists() and not (target / INFO_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a folder openrag wrote for vLLM; give another output folder")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        folder = _write(kind, source, tmp, dtype)
        info = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "source": str(source), "kind": kind, "dtype": dtype,
                **{k: v for k, v in asdict(folder).items() if k != "path"}}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(target)
    return _read_info(target)


def _kind(source: Path) -> str:
    """adapter, merged (experts in config.json), untrained (no reflection tokens) or dense."""
    if (source / layouts.ADAPTER_CONFIG).is_file():
        return "adapter"
    tokenizer = copy.deepcopy(read_tokenizer(source))
    if add_reflection_tokens(None, tokenizer):
        return "untrained"
    return "merged" if layouts.released_moe_config(read_config(source)) is not None else "dense"


def _write(kind: str, source: Path, out: Path, dtype: str) -> VLLMFolder:
    if kind == "adapter":
        from ..model.merge import merge

        merge(source, output_dir=out, dtype=dtype)
        folder = VLLMFolder(out, prompt_format=layouts.AdapterConfig.read(source).prompt_format)
    elif kind == "merged":
        _link_files(source, out)
        (out / "config.json").write_text((source / "config.json").read_text())
        folder = VLLMFolder(out)
    else:  # untrained: the same model OpenRAG.from_pretrained answers with
        import torch

        loaded = load_pretrained(str(source), dtype=None if dtype == "auto" else getattr(torch, dtype), device="cpu")
        add_reflection_tokens(loaded.model, loaded.tokenizer)
        layouts.save_merged(loaded.model, loaded.tokenizer, out)
        folder = VLLMFolder(out, prompt_format=loaded.prompt_format, untrained_tokens=True)
    if layouts.released_moe_config(read_config(out)) is not None:
        _name_architecture(out / "config.json")
    _index_every_tensor(out)
    return folder


def _name_architecture(config_path: Path) -> None:
    """Point ``architectures`` at the Open-RAG class; a released config's private model type becomes llama."""
    from transformers import CONFIG_MAPPING

    data = json.loads(config_path.read_text())
    model_type = data.get("model_type")
    if model_type not in LLAMA_TYPES:
        if model_type in CONFIG_MAPPING:
            raise ValueError(f"{config_path}: the vLLM backend runs Open-RAG experts on Llama-family models ({', '.join(LLAMA_TYPES)}), "
                             f"not {model_type}; answer with --backend torch")
        data["model_type"] = "llama"  # as openrag.model.loading.read_config reads it
    data.pop("auto_map", None)
    data["architectures"] = [ARCHITECTURE]
    config_path.write_text(json.dumps(data, indent=2) + "\n")


def _index_every_tensor(folder: Path) -> None:
    """vLLM reads only the safetensors files an index names: make each index name every tensor of the folder
    (``save_merged`` keeps the experts in a file of their own, which the dense index does not list)."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return
    weight_map = {}
    for path in layouts.safetensors_files(folder):
        with safe_open(path, framework="pt") as f:
            weight_map.update({key: path.name for key in f.keys()})
    for index in indexes:
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(data, indent=2) + "\n")


def _link_files(source: Path, out: Path) -> None:
    """Safetensors hard-linked (symlinked across file systems), small files copied; pickles and GGUF left out."""
    out.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if not path.is_file() or _SKIPPED.search(path.name):
            continue
        if path.name.endswith(".safetensors"):
            try:
                os.link(path.resolve(), out / path.name)
            except OSError:
                os.symlink(path.resolve(), out / path.name)
        else:
            shutil.copy2(path, out / path.name)
    for index in source.glob("*.safetensors.index.json"):
        shutil.copy2(index, out / index.name)


def _names_architecture(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("architectures") == [ARCHITECTURE]


def _read_info(folder: Path) -> VLLMFolder:
    info = folder / INFO_FILE
    if not info.is_file():
        return VLLMFolder(folder)
    data = json.loads(info.read_text())
    return VLLMFolder(folder, prompt_format=data.get("prompt_format"), untrained_tokens=bool(data.get("untrained_tokens")))


def _fingerprint(source: Path, kind: str, dtype: str) -> str:
    parts = {"format_version": FORMAT_VERSION, "source": str(source.resolve()), "dtype": dtype, "files": _listing(source)}
    if kind == "adapter":
        parts["base"] = _listing(resolve_folder(layouts.AdapterConfig.read(source).base_model))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, modification time) of every file under ``folder``."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name).strip("._")[:40] or "model"
