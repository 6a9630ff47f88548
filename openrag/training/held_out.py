"""The held-out check of a training run: loss and critique on instances the run never trains on.

Every ``--eval_steps`` the trainer runs its held-out instances (``--eval_data_path``, built like the training
data from questions kept out of it) through the model and reports:

* ``loss``: the training loss (the same target weights) over the held-out targets;
* ``relevance_auc`` and ``relevance_balanced_accuracy``: at each position whose target is ``[Relevant]`` or
  ``[Irrelevant]``, the share P([Relevant]) / (P([Relevant]) + P([Irrelevant])) against the target, as
  ``openrag eval`` scores the critique (AUC; accuracies on each class at the share 0.5, averaged);
* ``retrieval_auc``: the same for ``[Retrieval]`` against ``[No Retrieval]`` at each trained decision.

With ``--metric_for_best_model`` naming one of these (``loss`` by default) the Trainer keeps the best
checkpoint, whatever ``--save_total_limit`` removes.
"""

from __future__ import annotations

import torch

from ..eval.critique import auc, balanced_accuracy
from ..model.reflection import IRRELEVANT, NO_RETRIEVAL, RELEVANT, RETRIEVAL


class CritiqueScores:
    """The share of the positive token at each target position of a pair, with the target said."""

    def __init__(self, tokenizer):
        pairs = {"relevance": (RELEVANT, IRRELEVANT), "retrieval": (RETRIEVAL, NO_RETRIEVAL)}
        self.ids = {name: tuple(tokenizer.convert_tokens_to_ids(t) for t in pair) for name, pair in pairs.items()}
        self.shares: dict[str, list[float]] = {name: [] for name in pairs}
        self.positive: dict[str, list[bool]] = {name: [] for name in pairs}

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """logits [N, V] at the trained positions, targets [N] the token each one is trained to give."""
        for name, (yes, no) in self.ids.items():
            at = (targets == yes) | (targets == no)  # [N]
            if not at.any():
                continue
            pair = logits[at][:, [yes, no]].float()  # [n, 2]
            self.shares[name] += pair.softmax(-1)[:, 0].tolist()
            self.positive[name] += (targets[at] == yes).tolist()

    def metrics(self) -> dict[str, float]:
        out = {}
        for name in self.shares:
            value = auc(self.shares[name], self.positive[name])
            if value is not None:
                out[f"{name}_auc"] = value
        balanced = balanced_accuracy(self.shares["relevance"], self.positive["relevance"])
        if balanced is not None:
            out["relevance_balanced_accuracy"] = balanced
        out["relevance_n"] = float(len(self.shares["relevance"]))
        return out
