"""``OpenRAGTrainer``: the Hugging Face Trainer with Open-RAG's loss, logging and checkpoints.

DDP, FSDP, DeepSpeed, mixed precision, gradient accumulation and checkpointing come from the Trainer;
this class changes only what Open-RAG needs:

* the loss: cross-entropy on target tokens, with logits computed at those positions only (prompt and
  passage positions never reach the vocabulary projection), plus the optional load-balancing loss;
* the logs: tokens/s and each layer's expert load, to tensorboard and the console;
* the checkpoints: our adapter layout (see checkpointing.py) instead of a full model;
* no weight decay on the embedding matrices, so that their frozen rows stay bit-identical.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..data.tokenize import IGNORE_INDEX
from ..model.experts import moe_adapters
from .checkpointing import load_checkpoint, save_checkpoint
from .data import TokenizedDataset
from .held_out import CritiqueScores
from .routing import LoadMeter, load_balancing_loss
from .setup import TrainableModel, embedding_weights

log = logging.getLogger(__name__)

LOAD_PREFIX = "expert_load/"


def target_loss(model, inputs: dict[str, torch.Tensor], weights: torch.Tensor | None = None):
    """Summed next-token cross-entropy over the trained tokens, with the vocabulary projection run at
    those positions only (the same value as transformers' loss times the token count). ``weights``: [V]
    loss weight of each target token id (None: all 1). Returns ``(loss_sum, number of trained tokens, model outputs)``."""
    labels = inputs["labels"]  # [B, T]
    targets = labels[:, 1:]  # [B, T-1] the token each position predicts
    predicts = torch.zeros_like(labels, dtype=torch.bool)  # [B, T] positions whose next token is trained
    predicts[:, :-1] = targets != IGNORE_INDEX
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=predicts)
    chosen = targets[predicts[:, :-1]]  # [N]
    losses = F.cross_entropy(outputs.logits.float(), chosen, reduction="none")  # logits: [N, V] -> [N]
    if weights is not None:
        losses = losses * weights[chosen]
    return losses.sum(), chosen.numel(), outputs


class OpenRAGTrainer(Trainer):
    def __init__(self, *args, setup: TrainableModel, router_aux_loss_coef: float = 0.0, reflection_loss_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup = setup
        self.aux_coef = router_aux_loss_coef
        self._target_weights = None  # [V] loss weight per target token id: the new (reflection) token rows get theirs
        if reflection_loss_weight != 1.0:
            vocab = setup.inner.get_output_embeddings().weight.shape[0]
            self._target_weights = torch.ones(vocab, device=self.args.device)
            self._target_weights[setup.num_base_tokens:] = reflection_loss_weight
        self._adapters = moe_adapters(setup.model)
        self._meter = LoadMeter()
        self._interval_start: float | None = None
        console_every = getattr(self.args, "expert_load_print_every", 10)
        if self.args.disable_tqdm:
            self.remove_callback(PrinterCallback)
            self.add_callback(ConsolePrinter(console_every))
        else:
            self.remove_callback(ProgressCallback)
            self.add_callback(ConsoleProgress(console_every))

    # --- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._interval_start is None:
            self._interval_start = time.perf_counter()
        token_mask = inputs.pop("token_mask", None)  # [B, T] real tokens of packed rows (see PackingCollator)
        labels, attention_mask = inputs["labels"], inputs.get("attention_mask", token_mask)  # [B, T]
        loss_sum, num_targets, outputs = target_loss(model, inputs, self._target_weights)
        if num_items_in_batch is not None:
            # Normalised by the trained tokens of the whole accumulated (and, by default, all-device) batch,
            # as transformers does for its own loss.
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
            self.loss_is_scaled_for_ga = True
        else:
            loss = loss_sum / max(num_targets, 1)
            self.loss_is_scaled_for_ga = False
        if model.training:
            real = attention_mask if attention_mask is not None else torch.ones_like(labels)
            self._meter.add(self._adapters, attention_mask, real.sum())
            if self.aux_coef > 0 and self._adapters:
                aux = load_balancing_loss(self._adapters, attention_mask)
                self._meter.add_aux(aux.detach())
                steps = self.current_gradient_accumulation_steps if self.loss_is_scaled_for_ga else 1
                loss = loss + self.aux_coef * aux / steps
        return (loss, outputs) if return_outputs else loss

    # --- held-out check -------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Loss and critique of the held-out instances (held_out.py), logged and returned for the best-checkpoint choice."""
        start = time.perf_counter()
        loader = self.get_eval_dataloader(eval_dataset)
        model, was_training = self.model, self.model.training
        model.eval()
        scores = CritiqueScores(self.setup.tokenizer)
        loss_sum, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                batch.pop("token_mask", None)
                total, n, outputs = target_loss(model, batch, self._target_weights)
                targets = batch["labels"][:, 1:]  # [B, T-1], in the order target_loss keeps logits
                scores.add(outputs.logits, targets[targets != IGNORE_INDEX])
                loss_sum, count = loss_sum + float(total), count + n
        model.train(was_training)
        if self.accelerator.num_processes > 1:  # every rank saw its shard: pool the sums and the scores
            parts = [None] * self.accelerator.num_processes
            torch.distributed.all_gather_object(parts, (loss_sum, count, scores.shares, scores.positive))
            loss_sum, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
            for name in scores.shares:
                scores.shares[name] = [x for p in parts for x in p[2][name]]
                scores.positive[name] = [x for p in parts for x in p[3][name]]
        metrics = {"loss": loss_sum / max(count, 1), **scores.metrics(), "runtime": time.perf_counter() - start}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # --- logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process gets here, so the sums below may be collective
            logs.update(self._interval_metrics())
        super().log(logs, start_time)

    def _interval_metrics(self) -> dict[str, float]:
        meter, now = self._meter, time.perf_counter()
        if not meter.batches:
            return {}
        device = self.args.device
        tokens = float(self.accelerator.reduce(torch.as_tensor(meter.tokens, dtype=torch.float32, device=device), reduction="sum"))
        out = {"tokens_per_second": tokens / max(now - (self._interval_start or now), 1e-9)}
        if meter.aux_batches:
            out["aux_loss"] = float(meter.aux_sum) / meter.aux_batches
        if meter.counts is not None:
            counts = self.accelerator.reduce(meter.counts.float(), reduction="sum")  # [L, E]
            shares = counts / counts.sum(-1, keepdim=True).clamp(min=1)  # [L, E] share of routings per expert
            for layer, row in enumerate(shares.tolist()):
                for expert, share in enumerate(row):
                    out[f"{LOAD_PREFIX}layer_{layer:02d}/expert_{expert}"] = share
        meter.reset()
        self._interval_start = now
        return out

    # --- optimiser and sampler ------------------------------------------------------------------

    def get_decay_parameter_names(self, model) -> list[str]:
        """No weight decay on the embedding matrices: decay would move the frozen rows."""
        names = set(super().get_decay_parameter_names(model))
        embeddings = {id(w) for w in embedding_weights(model)}
        return [n for n, p in model.named_parameters() if n in names and id(p) not in embeddings]

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, TokenizedDataset):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    # --- checkpoints ----------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        log.info("saving checkpoint to %s", output_dir)
        save_checkpoint(self.setup, output_dir, state_dict=state_dict, official=getattr(self.args, "save_official_layout", False))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """A checkpoint kept without its optimizer state (scripts/keep_checkpoint.py: Adam's moments are too large
        for git) resumes with its learning-rate schedule where it stopped and the moments started afresh."""
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        folder = Path(checkpoint) if checkpoint is not None else None
        if folder is not None and not (folder / OPTIMIZER_NAME).is_file() and (folder / SCHEDULER_NAME).is_file():
            log.warning("%s holds no optimizer state: Adam's moments start afresh, the learning-rate schedule goes on", folder)
            self.lr_scheduler.load_state_dict(torch.load(folder / SCHEDULER_NAME, weights_only=True))
            return
        super()._load_optimizer_and_scheduler(checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        log.info("resuming from %s", resume_from_checkpoint)
        load_checkpoint(self.setup, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_checkpoint(self.setup, self.state.best_model_checkpoint)


# --- console ------------------------------------------------------------------------------------


def format_log(logs: dict[str, float], step: int, max_steps: int) -> str:
    """One console line: step, loss, learning rate, tokens/s and whatever else is scalar."""
    parts = [f"step {step}/{max_steps}"]
    names = {"loss": "loss {:.4f}", "learning_rate": "lr {:.3g}", "grad_norm": "grad_norm {:.3f}",
             "tokens_per_second": "{:,.0f} tokens/s", "aux_loss": "aux_loss {:.4f}", "epoch": "epoch {:.2f}"}
    for key, fmt in names.items():
        if key in logs:
            parts.append(fmt.format(logs[key]))
    for key, value in logs.items():
        if key not in names and not key.startswith(LOAD_PREFIX) and isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4g}")
    return " | ".join(parts)


def format_expert_load(logs: dict[str, float]) -> str | None:
    """The per-layer expert-load table (percent of routings per expert) from a log, or None."""
    table: dict[int, dict[int, float]] = {}
    for key, value in logs.items():
        if key.startswith(LOAD_PREFIX):
            layer, expert = key[len(LOAD_PREFIX):].split("/")
            table.setdefault(int(layer.split("_")[1]), {})[int(expert.split("_")[1])] = value
    if not table:
        return None
    num_experts = 1 + max(max(row) for row in table.values())
    lines = [f"expert load, % of routings to experts 0..{num_experts - 1} (balanced: {100 / num_experts:.1f}):"]
    for layer in sorted(table):
        lines.append(f"  layer {layer:2d}: " + " ".join(f"{100 * table[layer].get(e, 0):5.1f}" for e in range(num_experts)))
    return "\n".join(lines)


class _ConsoleLines:
    def __init__(self, load_every: int):
        self.load_every = load_every
        self.logs_seen = 0

    def lines(self, state, logs: dict) -> list[str]:
        out = [format_log(logs, state.global_step, state.max_steps)]
        table = format_expert_load(logs)
        if table is not None:
            if self.load_every and self.logs_seen % self.load_every == 0:
                out.append(table)
            self.logs_seen += 1
        return out


class ConsoleProgress(ProgressCallback):
    """The Trainer's progress bar, with readable log lines instead of raw dicts."""

    def __init__(self, load_every: int = 10):
        super().__init__()
        self._console = _ConsoleLines(load_every)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        write = self.training_bar.write if self.training_bar is not None else print
        for line in self._console.lines(state, logs):
            write(line)


class ConsolePrinter(TrainerCallback):
    """Log lines without a progress bar (``--disable_tqdm True``)."""

    def __init__(self, load_every: int = 10):
        self._console = _ConsoleLines(load_every)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            for line in self._console.lines(state, logs):
                print(line, flush=True)
