"""One evaluation run, declared once: :class:`EvalRequest` is what ``openrag eval`` is asked and what its loop runs.

Every field with a ``help`` is also an ``openrag eval`` flag of the same name (:func:`add_request_flags`), in the
flag group its metadata names; a new setting is one field here. The fields without one are set by the command
from other flags: ``ndocs`` (``--ndocs``/``--top_k``), ``progress`` (``--no_progress``), ``options`` (the
answering flags of :class:`openrag.answer.AnswerOptions`) and ``backend`` (the backend flags).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..answer.backend_types import BackendOptions
from ..answer.options import default_of
from ..bundled_names import DEFAULT_NAME
from ..data.fingerprint import dataset_identity
from ..flags import add_field_flags, flag_metadata
from ..precision import DTYPE_HELP, DTYPES
from ..registry import check_choice
from ..tasks import EVAL_TASKS, get_eval_task
from .metrics import METRICS
from .passages import RANKERS

PASSAGE_SOURCES = ("from_data", "from_index")  # --passages: a row's own passages where it has some, or the index's
BASELINES = ("standard_rag", "closed_book")  # --baseline: answered in a plain prompt (eval.baseline)
FLAG_GROUPS = ("data", "model and answering", "output and processes")


@dataclass
class EvalRequest:
    """One evaluation run. Defaults given as None are resolved here: the task's metric and dataset,
    ``./eval/{task}.jsonl``."""

    task: str = field(metadata=flag_metadata("data", "the task: its data, metric and prompts (openrag.tasks)", choices=EVAL_TASKS))
    dataset: str | None = field(default=None, metadata=flag_metadata("data", "local file in any supported format, or a hub "
                                "dataset (default for multi-hop tasks: shayekh/openrag_bench)"))
    split: str | None = field(default=None, metadata=flag_metadata("data", "hub split (only dev is read)"))
    limit: int | None = field(default=None, metadata=flag_metadata("data", "answer only the first N questions (before sharding)"))
    strict: bool = field(default=False, metadata=flag_metadata("data", "stop at the first bad row (default: report it, skip "
                         "it, count it)"))
    ranker: str = field(default="bm25", metadata=flag_metadata("data", "order of unranked candidate paragraphs (HotpotQA/2Wiki/"
                        "MuSiQue originals) before the first --ndocs are taken", choices=RANKERS))
    index: str | None = field(default=None, metadata=flag_metadata("data", "an `openrag index` folder: rows without passages "
                              "are answered from it (and retrieval_recall@K is reported)", metavar="INDEX_DIR"))
    passages: str = field(default="from_data", metadata=flag_metadata("data", "with --index: from_data (default) keeps a row's "
                          "own passages and searches only for rows without; from_index searches for every row",
                          choices=PASSAGE_SOURCES))

    model_name: str = field(default=DEFAULT_NAME, metadata=flag_metadata("model and answering", "checkpoint folder, hub name, or "
                            "'default' (the bundled model)"))
    baseline: str | None = field(default=None, metadata=flag_metadata("model and answering", "answer as a plain LM instead (no "
                                 "reflection tokens): standard_rag puts the --ndocs passages in one prompt before the "
                                 "question; closed_book gives the question alone", choices=BASELINES))
    instruction: str | None = field(default=None, metadata=flag_metadata("model and answering", "with --baseline: the "
                                    "instruction of the plain prompt (default: the task's)"))
    metric: str | None = field(default=None, metadata=flag_metadata("model and answering", "default: the task's", choices=METRICS))
    batch_size: int = field(default=8, metadata=flag_metadata("model and answering", "questions answered together (the "
                            "engine's rows follow)"))
    device: str | None = field(default=None, metadata=flag_metadata("model and answering", "cuda or cpu (default: cuda when "
                               "there is one)"))
    dtype: str | None = field(default=None, metadata=flag_metadata("model and answering", DTYPE_HELP, choices=DTYPES))

    output_file: Path | None = field(default=None, metadata=flag_metadata("output and processes", "JSON lines, one per question "
                                     "(default ./eval/TASK.jsonl); summary in .metrics.json beside it"))
    resume: bool = field(default=False, metadata=flag_metadata("output and processes", "keep the answers already in "
                         "--output_file and answer the rest (refused when they were made with other settings)"))
    overwrite: bool = field(default=False, metadata=flag_metadata("output and processes", "replace the answers already in "
                            "--output_file (without --resume or --overwrite, a file that holds answers is refused)"))
    world_size: int = field(default=1, metadata=flag_metadata("output and processes", "processes sharing the dataset (default "
                            "$WORLD_SIZE or 1)"))
    rank: int = field(default=0, metadata=flag_metadata("output and processes", "this process's share, 0..world_size-1 "
                      "(default $RANK or 0)"))

    ndocs: int = field(default_factory=lambda: default_of("ndocs"))  # passages per question; with an index, the K of its
    # search and of retrieval_recall@K
    progress: bool = True
    options: dict = field(default_factory=dict)  # answering options given (mode, threshold, w_use, ...): AnswerOptions'
    backend: BackendOptions = field(default_factory=BackendOptions)  # torch (built-in engine) or vllm, and vLLM's settings
    # How the answers are made, as the summary records it and a resume compares it: the request's own (model,
    # dataset, options, ...), then what the answerer reports once loaded (evaluate adds it).
    settings: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.task_info = get_eval_task(self.task)
        self.metric = self.metric or self.task_info.metric
        check_choice(METRICS, self.metric, "--metric")
        self.dataset = self.dataset or self.task_info.default_dataset
        if self.dataset is None:
            raise ValueError(f"--task {self.task} has no official dataset on the hub; pass --dataset with a local file (e.g. ../shared/data/...)")
        self.output_file = Path(self.output_file or Path("eval") / f"{self.task}.jsonl")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.ndocs < 1:
            raise ValueError(f"--ndocs/--top_k must be at least 1, got {self.ndocs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.options.get("max_new_tokens", 1) < 1:
            raise ValueError(f"--max_new_tokens must be at least 1, got {self.options['max_new_tokens']}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"--rank {self.rank} is not in 0..{self.world_size - 1} (--world_size {self.world_size})")
        check_choice(RANKERS, self.ranker, "--ranker")
        check_choice(PASSAGE_SOURCES, self.passages, "--passages")
        if self.passages == "from_index" and self.index is None:
            raise ValueError("--passages from_index needs --index INDEX_DIR")
        if self.resume and self.overwrite:
            raise ValueError("--resume keeps the answers already written and --overwrite replaces them: give one")
        if self.baseline is not None:
            self._check_baseline()
        if self.instruction is not None and self.baseline is None:
            raise ValueError("--instruction sets the plain prompt of --baseline; Open-RAG prompts are fixed by the task")
        if self.index is None and self.options.get("query", "question") != "question":
            raise ValueError(f"--query {self.options['query']} needs --index INDEX_DIR (it says what the index is asked)")
        self.settings = {"model": self.model_name, **dataset_identity(self.dataset), **self.options}
        if self.baseline is not None:
            self.settings["baseline"] = self.baseline
        if self.backend.backend != "torch":  # recorded only when not the default, so older runs resume as they were
            self.settings["backend"] = self.backend.backend
        if self.dtype is not None:  # likewise: answers in another dtype are other answers
            self.settings["dtype"] = self.dtype

    def _check_baseline(self) -> None:
        check_choice(BASELINES, self.baseline, "--baseline")
        if self.index is not None:
            raise ValueError("--baseline reads the data's own passages; drop --index")
        if self.backend.backend != "torch":
            raise ValueError(f"--baseline answers with transformers' generate: drop --backend {self.backend.backend}")
        openrag_only = sorted(k for k in self.options if k != "max_new_tokens")
        if openrag_only:
            raise ValueError(f"--baseline {self.baseline} answers in a plain prompt: drop --{', --'.join(openrag_only)} (Open-RAG options)")

    @property
    def recall_key(self) -> str:
        return f"retrieval_recall@{self.ndocs}"


def request_flag_fields() -> list:
    """The fields of EvalRequest that are ``openrag eval`` flags, in declaration order."""
    return [f for f in fields(EvalRequest) if "help" in f.metadata]


def add_request_flags(parser: argparse.ArgumentParser, defaults: dict | None = None) -> dict[str, argparse._ArgumentGroup]:
    """The flags of :func:`request_flag_fields`, each in its group (``defaults``: the command's own); returns the
    groups by name, for the command's other flags."""
    groups = {name: parser.add_argument_group(name) for name in FLAG_GROUPS}
    for name, group in groups.items():
        add_field_flags(group, [f for f in request_flag_fields() if f.metadata["group"] == name], defaults)
    return groups
