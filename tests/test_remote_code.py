"""No Python of a checkpoint folder ever runs (issue 16, item 4).

A downloaded folder may name its own classes in ``auto_map`` (config.json, tokenizer_config.json). Unless
``trust_remote_code=False`` is passed, transformers asks at a prompt and runs the folder's code after one "y".
Here the user always answers "y", and the folder's code would write a file: every loader must read the
folder without asking, and the file must never appear.
"""

from __future__ import annotations

import json

import pytest

from .train_helpers import write_base

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("the checkpoint's code ran")
from transformers import LlamaConfig, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "evil_model"
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture
def attack(tmp_path, monkeypatch):
    """(marker the folder's code writes, prompts shown): a user who answers "y" to every prompt."""
    import transformers.dynamic_module_utils as dynamic

    prompts = []
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "y")
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where its code would be copied
    return tmp_path / "ran", prompts


def arm(folder, marker, where: str):
    """Put code in ``folder`` that ``auto_map`` in its config (``where="config"``) or tokenizer config names."""
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    name = "config.json" if where == "config" else "tokenizer_config.json"
    data = json.loads((folder / name).read_text())
    if where == "config":
        data.update(model_type="evil_model", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    else:
        data.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    (folder / name).write_text(json.dumps(data))
    return folder


def adapter_folder(base, folder):
    """An openrag adapter checkpoint (2 experts, no LoRA) over ``base``."""
    from openrag.model.layouts import save_adapter
    from openrag.training.args import ModelArguments, MoEArguments
    from openrag.training.setup import build_model

    setup = build_model(ModelArguments(model_name_or_path=str(base), lora_r=0), MoEArguments(num_experts=2, topk=1, adapter_dim=4))
    save_adapter(setup.model, setup.tokenizer, folder, base_model=str(base), num_base_tokens=setup.num_base_tokens)
    return folder


def load(folder):
    from openrag import load_model

    return load_model(str(folder), device="cpu")[0]


def data_build_tokenizer(folder):
    from openrag.commands.data import load_tokenizer

    return load_tokenizer(str(folder))


def training_setup(folder):
    from openrag.training.args import ModelArguments, MoEArguments
    from openrag.training.setup import build_model

    return build_model(ModelArguments(model_name_or_path=str(folder), lora_r=0), MoEArguments(num_experts=2, topk=1, adapter_dim=4)).model


def merge_checkpoint(folder):
    from openrag.model.merge import merge

    return merge(folder, output_dir=folder.parent / "merged")


def outcome(entry, folder):
    """What ``entry(folder)`` returned, or the exception it raised."""
    try:
        return entry(folder)
    except Exception as err:  # the test looks at it, after checking that no code ran
        return err


@pytest.mark.parametrize("entry", [load, training_setup])
def test_a_config_auto_map_is_read_as_the_llama_it_claims_to_be(tmp_path, attack, entry):
    marker, prompts = attack
    model = outcome(entry, arm(write_base(tmp_path / "base"), marker, "config"))
    assert not marker.exists() and prompts == []
    assert type(model).__name__ == "LlamaForCausalLM"


def refused(result) -> bool:
    return isinstance(result, ValueError) and "openrag runs no code from a checkpoint" in str(result)


@pytest.mark.parametrize("entry", [load, data_build_tokenizer, training_setup])
def test_a_tokenizer_auto_map_is_refused_not_run(tmp_path, attack, entry):
    marker, prompts = attack
    result = outcome(entry, arm(write_base(tmp_path / "base"), marker, "tokenizer"))
    assert not marker.exists() and prompts == []
    assert refused(result), result


@pytest.mark.parametrize("entry", [load, merge_checkpoint])
def test_an_adapter_checkpoint_tokenizer_auto_map_is_refused_not_run(tmp_path, attack, entry):
    marker, prompts = attack
    result = outcome(entry, arm(adapter_folder(write_base(tmp_path / "base"), tmp_path / "adapter"), marker, "tokenizer"))
    assert not marker.exists() and prompts == []
    assert refused(result), result
