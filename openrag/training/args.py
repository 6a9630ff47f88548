"""The flags of ``openrag train``: the seed's command line (docs/method.md section 8), as dataclasses.

``TrainingArguments`` brings every Hugging Face Trainer flag (``--bf16 True``, ``--save_strategy``,
``--deepspeed``, ``--fsdp``, ...); the three dataclasses here add the model, expert and data flags.
Defaults follow the released recipe (docs/method.md section 4) where it names one.

(No ``from __future__ import annotations``: HfArgumentParser reads these annotations at run time.)
"""

import logging
import warnings
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from ..bundled_names import SMOLLM2_NAME
from ..precision import training_precision

log = logging.getLogger(__name__)

RELEASED_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,embed_tokens,lm_head"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=SMOLLM2_NAME,
        metadata={"help": "the dense base: a hub name, a local checkpoint folder, or 'smollm2' for the bundled base"},
    )
    bits: int = field(
        default=16,
        metadata={"help": "4: QLoRA, the frozen base in 4-bit NF4 (needs bitsandbytes; on a CUDA GPU or the CPU); 16: no quantisation"},
    )
    lora_r: int = field(default=64, metadata={"help": "LoRA rank on the dense projections; 0 trains no LoRA"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: str = field(
        default=RELEASED_LORA_TARGETS,
        metadata={"help": "comma-separated module names that get a LoRA (the released recipe's by default)"},
    )
    init_from: str = field(
        default=None,
        metadata={"help": "warm start: an openrag adapter checkpoint over the same base whose experts, routers and "
                          "token rows (and LoRA, if it has the same) this run starts from; a LoRA it lacks starts fresh"},
    )

    def __post_init__(self):
        if self.bits not in (4, 16):
            raise ValueError(f"--bits must be 4 (QLoRA) or 16 (no quantisation), got {self.bits}")
        if self.lora_r < 0:
            raise ValueError(f"--lora_r must be >= 0 (0: no LoRA), got {self.lora_r}")
        if self.bits == 4 and self.lora_r == 0:
            log.warning("--bits 4 with --lora_r 0: the quantised base stays frozen; only experts and new tokens train")

    @property
    def lora_targets(self) -> list[str]:
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


@dataclass
class MoEArguments:
    num_experts: int = field(default=8, metadata={"help": "adapter experts per layer; 0: none (a LoRA-only baseline)"})
    topk: int = field(default=2, metadata={"help": "experts each token is routed to"})
    adapter_dim: int = field(default=512, metadata={"help": "bottleneck width of each expert"})
    moe_scaling: float = field(default=0.25, metadata={"help": "scale of the expert term"})
    expert_dropout: float = field(default=0.1, metadata={"help": "dropout on the experts' input"})
    router_aux_loss_coef: float = field(
        default=0.0,
        metadata={"help": "weight of the load-balancing loss E * sum_e f_e * P_e (mean over layers); 0: off, as released"},
    )

    def __post_init__(self):
        if self.num_experts > 0:
            from ..model.experts import MoEConfig

            MoEConfig(self.num_experts, self.topk, self.adapter_dim, self.moe_scaling, self.expert_dropout)  # validates
        elif self.num_experts < 0:
            raise ValueError(f"--num_experts must be >= 0 (0: no experts), got {self.num_experts}")
        if self.router_aux_loss_coef < 0:
            raise ValueError(f"--router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}")


@dataclass
class DataArguments:
    data_path: str = field(
        default=None,
        metadata={"help": "training instances: a hub dataset (shayekh/openrag_train_data) or a local file from `openrag data build`"},
    )
    data_subset: str = field(default=None, metadata={"help": "subset (configuration) of a hub dataset, e.g. 'moe'"})
    eval_data_path: str = field(
        default=None,
        metadata={"help": "held-out instances (an `openrag data build` file of questions kept out of --data_path), checked "
                          "every --eval_steps with --eval_strategy steps: loss, relevance AUC and balanced accuracy, "
                          "retrieval AUC; --metric_for_best_model loss (or relevance_auc) keeps the best checkpoint"},
    )
    model_max_length: int = field(default=4096, metadata={"help": "instances are truncated to this many tokens"})
    packing: bool = field(
        default=False,
        metadata={"help": "pack each batch's instances into rows of at most --model_max_length tokens (no padding "
                          "between them; each attends only to itself through its position ids; sdpa/eager attention)"},
    )
    reflection_loss_weight: float = field(
        default=1.0,
        metadata={"help": "loss weight of the added tokens' targets (the reflection tokens and <paragraph> markers) against the "
                          "others; the logged loss is this weighted sum over the target count (1: plain cross-entropy, as released)"},
    )
    tokenized_cache: bool = field(
        default=True,
        metadata={"help": "keep the tokenised data under OUTPUT_DIR/tokenized/ so that a resumed run skips tokenisation"},
    )

    def __post_init__(self):
        if not self.data_path:
            raise ValueError("--data_path is required: a hub dataset name or a local JSON-lines file of {input, output}")
        if self.model_max_length < 8:
            raise ValueError(f"--model_max_length must be at least 8 tokens, got {self.model_max_length}")
        if self.reflection_loss_weight <= 0:
            raise ValueError(f"--reflection_loss_weight must be > 0, got {self.reflection_loss_weight}")


@dataclass
class OpenRAGTrainingArguments(TrainingArguments):
    """Trainer flags, with the released recipe's defaults and the seed's old flag names."""

    output_dir: str = field(default="./checkpoints", metadata={"help": "checkpoints and logs go here"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (released: 2e-4 for 7B)"})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "learning-rate schedule"})
    max_grad_norm: float = field(default=0.3, metadata={"help": "gradient clipping norm (0: off)"})
    logging_steps: float = field(default=10, metadata={"help": "log every N optimizer steps"})
    report_to: str = field(
        default="auto",
        metadata={"help": "'tensorboard', 'none', ...; 'auto' = tensorboard when installed, else none"},
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "'group_by_length' (batches of similar lengths, less padding), 'random' or 'sequential'"},
    )
    group_by_length: bool = field(
        default=None, metadata={"help": "older transformers' flag: True = --train_sampling_strategy group_by_length, False = random"}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept False: the collator picks its columns"})
    ddp_find_unused_parameters: bool = field(
        default=False, metadata={"help": "every trainable tensor takes part in every step, so DDP need not search"}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "no progress bar (log lines only)"})
    evaluation_strategy: str = field(default=None, metadata={"help": "old name of --eval_strategy (the seed's flag)"})
    save_official_layout: bool = field(
        default=False,
        metadata={"help": "each save also writes adapter_model/ (PEFT) and moe_model.bin, as the released code did"},
    )
    expert_load_print_every: int = field(
        default=10,
        metadata={"help": "print the per-layer expert-load table every N logs (0: never); tensorboard gets it at every log"},
    )

    cpu_precision = None  # on the CPU, what --bf16/--fp16 became and why (set below; logged when the run starts)

    def __post_init__(self):
        import torch

        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.group_by_length is not None:
            self.train_sampling_strategy = "group_by_length" if self.group_by_length else "random"
        if self.report_to == "auto":
            self.report_to = "tensorboard" if _tensorboard_installed() else "none"
        if not torch.cuda.is_available():
            precision = training_precision(self.bf16, self.fp16, cuda=False)
            if (precision.bf16, precision.fp16) != (self.bf16, self.fp16):
                warnings.warn(precision.reason, stacklevel=2)
            elif precision.bf16:
                self.use_cpu = True  # transformers accepts bf16 without a GPU only when told the run is on the CPU
            self.bf16, self.fp16 = precision.bf16, precision.fp16
            self.cpu_precision = precision.reason
            if self.tf32:
                warnings.warn("--tf32 is for CUDA GPUs; ignored on the CPU", stacklevel=2)
                self.tf32 = None
            self.dataloader_pin_memory = False  # pinned memory speeds copies to a GPU; on the CPU torch only warns
        super().__post_init__()


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


ARGUMENT_CLASSES = (ModelArguments, MoEArguments, DataArguments, OpenRAGTrainingArguments)


def add_train_arguments(parser) -> None:
    """Add every field of :data:`ARGUMENT_CLASSES` to an argparse parser, as HfArgumentParser would."""
    from typing import get_type_hints

    from transformers import HfArgumentParser

    for cls in ARGUMENT_CLASSES:
        group = parser.add_argument_group(cls.__name__)
        hints = get_type_hints(cls)
        for f in fields(cls):
            if f.init:
                f.type = hints[f.name]
                HfArgumentParser._parse_dataclass_field(group, f)


def train_arguments_from(namespace) -> tuple[ModelArguments, MoEArguments, DataArguments, OpenRAGTrainingArguments]:
    """The four dataclasses from a parsed namespace (validation runs in their ``__post_init__``)."""
    values = vars(namespace)
    return tuple(cls(**{f.name: values[f.name] for f in fields(cls) if f.init and f.name in values}) for cls in ARGUMENT_CLASSES)
