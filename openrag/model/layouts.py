"""Every checkpoint layout openrag reads or writes, in one place: names, config fields, read and write.

* dense: an ordinary Hugging Face folder (``config.json`` + safetensors).
* merged: the released Open-RAG layout: a dense folder whose ``config.json`` also has
  ``num_experts, topk, adapter_dim, moe_scaling`` and whose safetensors also hold the
  ``model.layers.{i}.mlp.moe_adapter.*`` tensors (in any of its files). ``openrag merge`` writes it.
* adapter: this project's small layout (``openrag_config.json`` + ``adapter.safetensors``
  + tokenizer, optional ``lora/`` in PEFT format): the weights that training changed, over a named base.
  ``openrag train`` writes one per save; its ``extra.prompt_format`` says how the model was prompted.
* released training: the released trainer's ``checkpoint-N/`` (``adapter_model/`` PEFT LoRA over the dense
  projections + ``moe_model.bin``, expert settings in a ``config.json`` beside them); ``openrag train
  --save_official`` writes it too, ``openrag merge`` reads it.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .experts import MOE_KEYS_FIELDS, MoEConfig, decoder_layers, moe_config_of, remove_moe

ADAPTER_CONFIG = "openrag_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_LORA_DIR = "lora"  # the adapter layout's PEFT LoRA, if it has one
# the adapter layout's files besides its tensors (settings and tokenizer; those a tokenizer lacks are absent)
ADAPTER_TEXT_FILES = (ADAPTER_CONFIG, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
MERGED_MOE_WEIGHTS = "moe_adapter.safetensors"
NEW_EMBED_KEY = "new_token_rows.embed_tokens"  # [n_new, D] rows of the input embedding from num_base_tokens on
NEW_LM_HEAD_KEY = "new_token_rows.lm_head"  # [n_new, D] rows of an untied output embedding
RELEASED_LORA_DIR = "adapter_model"  # released training checkpoint: PEFT LoRA over the dense projections
RELEASED_MOE_FILE = "moe_model.bin"  # released training checkpoint: every state key containing "adapter"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")  # a Trainer save in an output folder


class CheckpointError(ValueError):
    """A checkpoint that does not match the model it is loaded into; the message names the key."""


@dataclass
class AdapterConfig:
    """Contents of ``openrag_config.json``."""

    base_model: str
    num_base_tokens: int
    moe: dict | None = None
    lora: bool = False
    format: str = "openrag-adapter"
    version: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def prompt_format(self) -> str | None:
        """The prompts the model learned (``training``), when the checkpoint records them."""
        return self.extra.get("prompt_format") or None

    @classmethod
    def read(cls, folder: Path) -> "AdapterConfig":
        path = folder / ADAPTER_CONFIG
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{path} is not a valid openrag adapter config: {err}") from err

    def write(self, folder: Path) -> None:
        (folder / ADAPTER_CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n")


def moe_settings(data, where: str) -> MoEConfig:
    """The expert settings a checkpoint file records (``num_experts``, ``topk``, ``adapter_dim``, ``moe_scaling``
    and, if recorded, ``dropout``), each checked: CheckpointError naming the file and the field."""
    import math

    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: the expert settings are {data!r}, not an object; restore the file as training wrote it")
    values = {**{k: data.get(k) for k in MOE_KEYS_FIELDS}, "dropout": data.get("dropout", MoEConfig.dropout)}
    for key, value in values.items():
        whole = key in ("num_experts", "topk", "adapter_dim")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (whole and value != int(value)):
            raise CheckpointError(f"{where}: expert setting {key!r} is {value!r}, not a {'whole' if whole else 'finite'} number; "
                                  "restore the file as training wrote it")
    try:
        return MoEConfig(int(values["num_experts"]), int(values["topk"]), int(values["adapter_dim"]), float(values["moe_scaling"]),
                         float(values["dropout"]))
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None


def released_moe_config(config) -> MoEConfig | None:
    """MoE settings from a released/merged ``config.json``, or None when it has none (a dense model, or another
    kind of MoE: ``num_experts`` alone is Qwen's too; ``adapter_dim`` and ``moe_scaling`` are Open-RAG's own)."""
    if all(getattr(config, k, None) is None for k in ("adapter_dim", "moe_scaling")):
        return None
    where = f"{getattr(config, '_name_or_path', '') or 'the model'}/config.json"
    return moe_settings({k: getattr(config, k, None) for k in MOE_KEYS_FIELDS}, where)


def safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


class SafetensorsTensors(Mapping[str, torch.Tensor]):
    """The tensors of safetensors files whose key ``keep`` accepts, as a mapping that reads a tensor from disk only
    when it is looked up; ``shapes`` come from the headers. A loader that takes one layer at a time holds one layer's
    tensors, never the whole file's."""

    def __init__(self, files: list[Path], keep: Callable[[str], bool] = lambda key: True):
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._file: dict[str, Path] = {}
        for path in files:
            try:
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        if keep(key):
                            self.shapes[key], self._file[key] = tuple(f.get_slice(key).get_shape()), path
            except Exception as err:  # safetensors raises its own error types for truncated or corrupt headers
                raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-download or re-save it") from err

    def __getitem__(self, key: str) -> torch.Tensor:
        path = self._file[key]
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(key)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read tensor {key!r} ({err}); the file may be truncated") from err

    def __contains__(self, key) -> bool:
        return key in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def read_tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the safetensors headers, without reading the tensors."""
    return SafetensorsTensors(files).shapes


def read_tensors(files: list[Path], keep) -> dict[str, torch.Tensor]:
    """Tensors whose key satisfies ``keep(key)``, from several safetensors files, all read now."""
    return dict(SafetensorsTensors(files, keep))


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str, optional=()) -> None:
    """Raise a :class:`CheckpointError` naming the first missing or mis-shaped key."""
    for key, shape in expected.items():
        if key not in found:
            if key in optional:
                continue
            raise CheckpointError(f"{where}: missing tensor {key!r} (expected shape {list(shape)})")
        if tuple(found[key]) != tuple(shape):
            raise CheckpointError(f"{where}: tensor {key!r} has shape {list(found[key])}, expected {list(shape)}")


# --- the expert tensors -------------------------------------------------------------------------

_LAYER_PREFIX = re.compile(r"^(?:.*\.)?layers\.(\d+)\.mlp\.moe_adapter\.(.+)$")


def moe_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Router and expert weights under the released key names (``model.layers.{i}.mlp.moe_adapter.*``)."""
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        adapter = getattr(layer.mlp, "moe_adapter", None)
        if adapter is None:
            continue
        for name, tensor in adapter.state_dict().items():
            out[f"model.layers.{i}.mlp.moe_adapter.{name}"] = tensor
    return out


def load_moe_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load released-layout expert tensors into an injected model, checking every key and shape first, then one
    layer at a time (a :class:`SafetensorsTensors` is read layer by layer).

    Keys may carry any prefix before ``layers.{i}`` (``base_model.model.model.layers...`` in the
    released training checkpoints)."""
    shapes = tensors.shapes if isinstance(tensors, SafetensorsTensors) else {k: tuple(v.shape) for k, v in tensors.items()}
    source: dict[str, str] = {}  # released name -> key in tensors
    for key in shapes:
        m = _LAYER_PREFIX.match(key)
        if m is None:
            raise CheckpointError(f"{where}: unexpected tensor {key!r}; expert keys look like model.layers.N.mlp.moe_adapter.*")
        name = m.group(2).replace(".default.", ".")  # a PEFT-wrapped module name, if any
        source[f"model.layers.{m.group(1)}.mlp.moe_adapter.{name}"] = key
    expected = {k: tuple(v.shape) for k, v in moe_state_dict(model).items()}
    check_shapes(expected, {name: shapes[key] for name, key in source.items()}, where)
    extra = sorted(set(source) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: tensor {extra[0]!r} has no place in this model (is num_experts or the layer count different?)")
    for i, layer in enumerate(decoder_layers(model)):
        adapter = getattr(layer.mlp, "moe_adapter", None)  # None in a model without experts (LoRA only)
        if adapter is None:
            continue
        prefix = f"model.layers.{i}.mlp.moe_adapter."
        adapter.load_state_dict({name[len(prefix):]: tensors[key] for name, key in source.items() if name.startswith(prefix)}, strict=True)


# --- the adapter layout ------------------------------------------------------------------------


def new_token_rows(model: nn.Module, num_base_tokens: int) -> dict[str, torch.Tensor]:
    """The embedding rows added for reflection tokens (and the untied lm_head rows)."""
    embed = model.get_input_embeddings().weight
    rows = {NEW_EMBED_KEY: embed[num_base_tokens:].detach().clone()}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embed:
        rows[NEW_LM_HEAD_KEY] = head.weight[num_base_tokens:].detach().clone()
    return rows


@torch.no_grad()
def load_new_token_rows(model: nn.Module, rows: dict[str, torch.Tensor], num_base_tokens: int, where: str) -> None:
    embed = model.get_input_embeddings().weight
    n_new = embed.shape[0] - num_base_tokens
    expected = {NEW_EMBED_KEY: (n_new, embed.shape[1])}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embed:
        expected[NEW_LM_HEAD_KEY] = (n_new, head.weight.shape[1])
    check_shapes(expected, {k: tuple(v.shape) for k, v in rows.items()}, where)
    embed[num_base_tokens:] = rows[NEW_EMBED_KEY].to(embed.dtype)
    if NEW_LM_HEAD_KEY in expected:
        head.weight[num_base_tokens:] = rows[NEW_LM_HEAD_KEY].to(head.weight.dtype)


def _adapter_tensors_from_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], num_base_tokens: int) -> dict[str, torch.Tensor]:
    """The adapter tensors out of a full state dict of ``model`` (what FSDP or DeepSpeed gather for saving,
    while the model's own parameters are shards). Keys are the model's parameter names."""
    tensors = {}
    for key, tensor in state_dict.items():
        m = _LAYER_PREFIX.match(key)
        if m is not None:
            tensors[f"model.layers.{m.group(1)}.mlp.moe_adapter.{m.group(2).replace('.default.', '.')}"] = tensor
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    rows = {NEW_EMBED_KEY: embed}
    if head is not None and head.weight is not embed:
        rows[NEW_LM_HEAD_KEY] = head.weight
    for out_key, param in rows.items():
        key = names.get(id(param))
        if key not in state_dict:
            raise CheckpointError(f"the state dict to save has no {key!r} (the {out_key.split('.')[-1]} weight)")
        tensors[out_key] = state_dict[key][num_base_tokens:].detach().clone()
    return tensors


def save_adapter(
    model: nn.Module, tokenizer, folder: str | Path, base_model: str, num_base_tokens: int, lora_model=None, state_dict=None,
    prompt_format: str | None = None,
) -> Path:
    """Write the adapter layout: expert + router weights, new token rows, tokenizer, and the PEFT LoRA if any.

    ``state_dict``: a full state dict of ``lora_model`` (or of ``model`` without LoRA) to take the tensors
    from instead of the parameters, for sharded training (FSDP, DeepSpeed ZeRO-3). ``prompt_format``: the
    prompts the model learned (openrag.answer.prompts.PROMPT_FORMATS), recorded for answering. The LoRA folder never
    holds the embedding matrices: their new rows are in ``adapter.safetensors``, the rest is the base's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        tensors = {**moe_state_dict(model), **new_token_rows(model, num_base_tokens)}
    else:
        tensors = _adapter_tensors_from_state_dict(lora_model if lora_model is not None else model, state_dict, num_base_tokens)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTER_WEIGHTS))
    if lora_model is not None:
        lora_model.save_pretrained(str(folder / ADAPTER_LORA_DIR), state_dict=state_dict, save_embedding_layers=False)
    tokenizer.save_pretrained(folder)
    moe = moe_config_of(model)
    AdapterConfig(  # last: a folder with it holds every file (find_checkpoint passes over a save cut short)
        base_model=base_model,
        num_base_tokens=num_base_tokens,
        moe=moe.to_dict() if moe else None,
        lora=lora_model is not None,
        extra={"prompt_format": prompt_format} if prompt_format else {},
    ).write(folder)
    return folder


def save_merged(model: nn.Module, tokenizer, folder: str | Path) -> Path:
    """Write the released merged layout: dense weights, MoE fields in config.json, expert tensors beside."""
    folder = Path(folder)
    moe = moe_config_of(model)
    experts = moe_state_dict(model)
    wrappers = [layer.mlp for layer in decoder_layers(model)]
    remove_moe(model)
    try:
        if moe is not None:
            for key in MOE_KEYS_FIELDS:
                setattr(model.config, key, getattr(moe, key))
        model.save_pretrained(folder)
    finally:
        for layer, wrapper in zip(decoder_layers(model), wrappers):
            layer.mlp = wrapper
    if experts:
        save_file({k: v.contiguous() for k, v in experts.items()}, str(folder / MERGED_MOE_WEIGHTS))
    tokenizer.save_pretrained(folder)
    return folder


def read_released_moe_bin(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``moe_model.bin`` of a released training checkpoint (routers and experts), read without
    unpickling arbitrary objects: ``torch.load(weights_only=True)`` accepts tensors and plain containers only."""
    path = Path(path)
    try:  # memory-mapped (read as the experts are loaded) unless it is in torch's legacy, non-zip format
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        raise CheckpointError(f"{path}: not a tensors-only torch file ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (key -> tensor)")
    return state


# --- the released training layout ----------------------------------------------------------------


def is_training_checkpoint(folder: Path) -> bool:
    """An adapter folder, or a released-layout training checkpoint."""
    return (folder / ADAPTER_CONFIG).is_file() or (folder / RELEASED_MOE_FILE).is_file()


def find_checkpoint(model_path: str | Path) -> Path:
    """The training checkpoint in ``model_path``: the folder itself, else its newest ``checkpoint-N``."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {model_path}; give a training output folder or one of its checkpoint-N folders")
    if is_training_checkpoint(folder):
        return folder
    newest = newest_checkpoint(folder, is_training_checkpoint)
    if newest is None:
        raise FileNotFoundError(f"{folder} holds no training checkpoint ({ADAPTER_CONFIG}, or {RELEASED_MOE_FILE} with {RELEASED_LORA_DIR}/)")
    return newest


def newest_checkpoint(folder: Path, whole: Callable[[Path], bool]) -> Path | None:
    """The ``checkpoint-N`` folder in ``folder`` with the largest N among those ``whole`` accepts (None if none)."""
    steps = sorted((int(m.group(1)), sub) for sub in folder.iterdir() if (m := CHECKPOINT_DIR.match(sub.name)) and sub.is_dir())
    return next((sub for _, sub in reversed(steps) if whole(sub)), None)


def released_training_moe_config(folder: Path) -> MoEConfig:
    """Expert settings of a released training checkpoint, from a ``config.json`` beside ``moe_model.bin``
    (or in its parent): never from defaults."""
    from ..jsonfiles import read_json_object

    for candidate in (folder / "config.json", folder.parent / "config.json"):
        if candidate.is_file():
            data = read_json_object(candidate, "restore the model config the checkpoint was trained with")
            if all(k in data for k in MOE_KEYS_FIELDS):
                return moe_settings(data, str(candidate))
    raise CheckpointError(
        f"{folder} does not record its expert settings: put a config.json with num_experts, topk, adapter_dim "
        "and moe_scaling beside moe_model.bin (the released training wrote them in its model config)"
    )


def save_released_training(folder: Path, full_state_dict: dict[str, torch.Tensor], lora_model=None, state_dict=None) -> None:
    """Add the released trainer's files to a checkpoint folder: ``adapter_model/`` (the LoRA, keys named as
    the released model named them) and ``moe_model.bin`` (every state key containing "adapter")."""
    if lora_model is not None:
        lora_model.save_pretrained(str(folder / RELEASED_LORA_DIR), state_dict=state_dict)
        _use_released_names(folder / RELEASED_LORA_DIR / "adapter_model.safetensors")
    torch.save({k: v.detach().cpu() for k, v in full_state_dict.items() if "adapter" in k}, folder / RELEASED_MOE_FILE)


def _use_released_names(path: Path) -> None:
    """The released model had the dense FFN's projections at ``mlp.gate_proj``; ours wraps them in
    ``mlp.dense_mlp``. Rename, so that the released merge code finds its keys."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    save_file({k.replace(".mlp.dense_mlp.", ".mlp."): v for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
