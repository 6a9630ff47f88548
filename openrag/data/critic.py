"""An optional LM critic that re-labels support and utility (Self-RAG's critic, with any causal LM).

The critic is asked a question in the instruction template and each allowed answer is scored by its
log-likelihood under the model; the best-scoring answer is the label. Relevance and the retrieval
decision stay with the data's own annotations.
"""

from __future__ import annotations

import torch

from ..model.reflection import FULLY_SUPPORTED, NO_SUPPORT, PARTIALLY_SUPPORTED
from ..precision import dtype_name
from ..tasks import format_prompt

SUPPORT_ANSWERS = {FULLY_SUPPORTED: "fully supported", PARTIALLY_SUPPORTED: "partially supported", NO_SUPPORT: "not supported"}
UTILITY_ANSWERS = {k: str(k) for k in range(1, 6)}

_SUPPORT_TASK = (
    "Is the answer to the question supported by the evidence? Reply fully supported, partially supported "
    "or not supported.\n\nQuestion: {question}\nAnswer: {answer}\nEvidence: {evidence}"
)
_UTILITY_TASK = (
    "Rate how useful the answer is for the question, from 1 (not useful at all) to 5 (complete and "
    "correct). Reply with the number only.\n\nQuestion: {question}\nAnswer: {answer}"
)


class Critic:
    def __init__(self, model, tokenizer, max_evidence_chars: int = 2000):
        self.model, self.tokenizer, self.max_evidence_chars = model, tokenizer, max_evidence_chars
        self._utility: dict[tuple[str, str], int] = {}  # utility ignores the evidence: once per question

    @classmethod
    def load(cls, name_or_path: str, device: str | None = None, dtype: str | None = None) -> Critic:
        from ..model.loading import load_model

        model, tokenizer = load_model(name_or_path, dtype=dtype, device=device)
        return cls(model, tokenizer)

    @property
    def dtype(self) -> str:
        """The dtype the critic computes in (its labels can differ between float32 and bf16)."""
        return dtype_name(next(self.model.parameters()).dtype)

    @torch.no_grad()
    def choose(self, prompt: str, options: list[str]) -> int:
        """Index of the option with the highest total log-probability after ``prompt``."""
        tok = self.tokenizer
        prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        rows = [prompt_ids + tok(o, add_special_tokens=False)["input_ids"] for o in options]
        width = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # [O, T]
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        logprobs = self.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)  # [O, T, V]
        scores = []
        for k, r in enumerate(rows):
            positions = torch.arange(len(prompt_ids) - 1, len(r) - 1, device=device)
            targets = torch.tensor(r[len(prompt_ids) :], device=device)
            scores.append(logprobs[k, positions, targets].sum().item())
        return max(range(len(options)), key=lambda i: scores[i])

    def support(self, question: str, answer: str, evidence: str) -> str:
        prompt = format_prompt(_SUPPORT_TASK.format(question=question, answer=answer, evidence=evidence[: self.max_evidence_chars]))
        tokens = list(SUPPORT_ANSWERS)
        return tokens[self.choose(prompt, [SUPPORT_ANSWERS[t] for t in tokens])]

    def utility(self, question: str, answer: str) -> int:
        prompt = format_prompt(_UTILITY_TASK.format(question=question, answer=answer))
        return 1 + self.choose(prompt, list(UTILITY_ANSWERS.values()))

    def relabel(self, instance) -> None:
        """Replace an instance's support (where it has one) and utility labels with the critic's."""
        if instance.relevant:
            instance.support = self.support(instance.input, instance.answer, instance.passage)
        key = (instance.input, instance.answer)
        if key not in self._utility:
            self._utility[key] = self.utility(*key)
        instance.utility = self._utility[key]
