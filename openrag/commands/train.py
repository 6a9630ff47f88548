"""``openrag train``: the seed's training command (docs/method.md section 8) on the Hugging Face Trainer.

    openrag train --model_name_or_path smollm2 --data_path train.jsonl --output_dir ./checkpoints --lora_r 0
    torchrun --nproc_per_node=4 -m openrag train --model_name_or_path meta-llama/Llama-2-7b-hf \\
        --data_path shayekh/openrag_train_data --data_subset moe --bf16 True ...

Every Trainer flag works (``--deepspeed``, ``--fsdp``, ``--gradient_checkpointing True``, ...).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.args import add_train_arguments

    add_train_arguments(parser)


def _configure_logging(main_process: bool) -> None:
    import logging

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("openrag").setLevel(logging.INFO if main_process else logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from ..training import run_training
    from ..training.args import train_arguments_from

    model_args, moe_args, data_args, training_args = train_arguments_from(args)
    _configure_logging(training_args.local_process_index == 0)
    run_training(model_args, moe_args, data_args, training_args)
    return 0
