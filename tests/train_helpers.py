"""Helpers for the training and merge tests: a word-level tokenizer of ~80 words (so that a tiny
model's vocabulary projection costs nothing), a tiny random Llama saved as a base folder, and a
tiny training set in the {input, output} JSON-lines format with reflection tokens and passages."""

from __future__ import annotations

import json
import re
from pathlib import Path

from openrag.data.tokenize import PROMPT_TEMPLATE

from .conftest import make_tiny_llama_for

COUNTRIES = {"France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid", "Portugal": "Lisbon", "Austria": "Vienna"}


def instances(n: int = 48) -> list[dict]:
    rows = []
    for i in range(n):
        country, city = list(COUNTRIES.items())[i % len(COUNTRIES)]
        question = f"What is the capital of {country}?"
        if i % 3 == 0:
            output = f"[No Retrieval]{city}[Utility:4]"
        elif i % 3 == 1:
            output = (
                f"[Retrieval]<paragraph>{city} is the capital city of {country}, and a large city.</paragraph>"
                f"[Relevant]{city}[Fully supported][Utility:5]"
            )
        else:
            output = (
                f"[Retrieval]<paragraph>The river flows through many old towns.</paragraph>[Irrelevant]"
                f"[Retrieval]<paragraph>{city} is in {country}.</paragraph>[Relevant]{city}[Partially supported][Utility:4]"
            )
        rows.append({"input": question, "output": output})
    return rows


def write_dataset(path: Path, n: int = 48) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in instances(n)))
    return path


def word_tokenizer():
    """A fast word-level tokenizer knowing every word of :func:`instances` and the prompt template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = " ".join(PROMPT_TEMPLATE.format(input=r["input"]) + r["output"] for r in instances())
    text = re.sub(r"\[[^\]]*\]|</?paragraph>", " ", text)  # reflection tokens are added later, whole
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def write_base(folder: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random Llama and its tokenizer, saved as a dense base checkpoint."""
    tokenizer = word_tokenizer()
    model = make_tiny_llama_for(tokenizer, seed=seed, **overrides)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_argv(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """An ``openrag train`` command line for the tiny model (experts 4 x 8, top-2; LoRA r=4)."""
    return [
        "--model_name_or_path", str(base), "--data_path", str(data), "--output_dir", str(out),
        "--num_experts", "4", "--topk", "2", "--adapter_dim", "8", "--moe_scaling", "0.25",
        "--lora_r", "4", "--lora_alpha", "8", "--per_device_train_batch_size", "4",
        "--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "True", "--seed", "7", "--dataloader_pin_memory", "False",
        *extra,
    ]  # fmt: skip


def parse_train_args(argv: list[str]):
    """An ``openrag train`` command line (without the ``train`` word) parsed as the command parses it."""
    from openrag.cli import build_parser
    from openrag.training.args import train_arguments_from

    return train_arguments_from(build_parser(with_flags=["train"]).parse_args(["train", *argv]))


def run_train(argv: list[str]):
    """Train in this process, as ``openrag train`` would; returns the trainer."""
    from openrag.training import run_training

    return run_training(*parse_train_args(argv))


def losses(trainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
