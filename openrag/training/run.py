"""One training run, from parsed flags to the final checkpoint in ``--output_dir``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..model.loading import resolve_folder
from .args import DataArguments, ModelArguments, MoEArguments, OpenRAGTrainingArguments
from .checkpointing import resume_folder, warm_start
from .data import Collator, PackingCollator, load_tokenized
from .setup import build_model, trainable_summary
from .trainer import OpenRAGTrainer

log = logging.getLogger(__name__)


def resume_target(value: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or True/last for the newest finished one in the output folder."""
    if value is None or value.lower() in ("", "false", "none", "no"):
        return None
    return resume_folder(value, output_dir)


def run_training(
    model_args: ModelArguments, moe_args: MoEArguments, data_args: DataArguments, args: OpenRAGTrainingArguments
) -> OpenRAGTrainer:
    from transformers import set_seed

    resume = resume_target(args.resume_from_checkpoint, args.output_dir)  # before the model: a bad one is refused at once
    if getattr(args.eval_strategy, "value", args.eval_strategy) != "no" and not data_args.eval_data_path:
        raise ValueError("--eval_strategy needs held-out instances: give --eval_data_path (e.g. the .held_out.jsonl of "
                         "`openrag data build --held_out N`), or --eval_strategy no")
    if model_args.init_from and not resume:
        resolve_folder(model_args.init_from)  # likewise a missing --init_from folder (warm_start reads it later)
    set_seed(args.seed)  # before the experts are initialised, so that a run is reproducible
    setup = build_model(model_args, moe_args, bf16=args.bf16, fp16=args.fp16)
    if model_args.init_from and not resume:  # a resumed run takes everything from its checkpoint
        warm_start(setup, model_args.init_from)
    if data_args.packing and setup.inner.config._attn_implementation not in ("sdpa", "eager"):
        # transformers separates packed instances by their position ids for sdpa and eager only (flash
        # attention does it for one-row batches only): elsewhere they would attend to each other
        raise ValueError(f"--packing needs sdpa or eager attention; this model uses {setup.inner.config._attn_implementation}")
    if args.cpu_precision:
        log.info("precision: %s", args.cpu_precision)
    log.info("%s", trainable_summary(setup.model))
    cache_dir = Path(args.output_dir) / "tokenized" if data_args.tokenized_cache else None
    with args.main_process_first(desc="tokenising the training data"):
        dataset = load_tokenized(data_args.data_path, data_args.data_subset, setup.tokenizer, data_args.model_max_length, cache_dir)
    held_out = None
    if data_args.eval_data_path:
        with args.main_process_first(desc="tokenising the held-out data"):
            held_out = load_tokenized(data_args.eval_data_path, None, setup.tokenizer, data_args.model_max_length, cache_dir)
        log.info("%d held-out instances, checked every %s steps", len(held_out), args.eval_steps)
    lengths = dataset.lengths
    log.info("%d training instances, %d tokens (mean %.0f, max %d)", len(dataset), sum(lengths), sum(lengths) / len(lengths), max(lengths))
    trainer = OpenRAGTrainer(
        model=setup.model,
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out,
        data_collator=PackingCollator(setup.tokenizer.pad_token_id, data_args.model_max_length) if data_args.packing
        else Collator(setup.tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        processing_class=setup.tokenizer,
        setup=setup,
        router_aux_loss_coef=moe_args.router_aux_loss_coef,
        reflection_loss_weight=data_args.reflection_loss_weight,
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the final adapter checkpoint, in --output_dir itself
    trainer.save_state()
    return trainer
