"""Training an Open-RAG model on the Hugging Face Trainer (``openrag train``).

* args.py: the command-line flags as dataclasses (the seed's flags plus every Trainer flag);
* setup.py: base model + reflection tokens + experts + LoRA, and which weights train;
* data.py: tokenised instances and the collator;
* routing.py: per-layer expert load and the load-balancing loss;
* trainer.py: the Trainer subclass (loss, logs, checkpoints);
* checkpointing.py: our adapter layout (and the released one) for each save, and resuming;
* run.py: one run from flags to the final checkpoint.
"""

from .run import run_training

__all__ = ["run_training"]
