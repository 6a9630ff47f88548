"""``openrag eval`` as a library call: read the task's data, load the model, answer, summarise, combine.

The command-line module only parses flags into :class:`EvalRequest` and calls :func:`evaluate` or
:func:`evaluate_sweep`; tests call them with a fake answerer in place of the model.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..answer.backends import BackendOptions
from ..data.fingerprint import dataset_identity
from ..jsonfiles import read_json_object
from ..registry import check_choice, unknown
from .metrics import METRICS
from .runner import (Answerer, Question, RunConfig, check_output, combine_shards, metrics_path, prepare_questions, read_records,
                     run_shard, shard_path)
from .sweep import DEFAULT_THRESHOLDS, RULES, plot_sweep, sweep, sweep_json, sweep_table
from ..tasks import get_eval_task


@dataclass
class EvalRequest:
    """One evaluation run; the fields are the ``openrag eval`` flags of the same names."""

    task: str
    output_file: Path | None = None  # default: ./eval/{task}.jsonl
    dataset: str | None = None  # local file (any format of openrag.data.readers) or hub name; default: the task's
    model_name: str = "default"  # checkpoint folder, hub name, or "default" (the bundled model)
    metric: str | None = None  # default: the task's metric
    split: str | None = None
    limit: int | None = None  # the first N questions of the dataset (before sharding)
    resume: bool = False
    overwrite: bool = False  # replace the answers already in output_file (else: refuse unless resume)
    strict: bool = False  # stop at the first bad row instead of skipping and counting it
    world_size: int = 1
    rank: int = 0
    batch_size: int = 8  # questions answered together (the engine batches their candidates)
    ranker: str = "bm25"  # how unranked candidate paragraphs are ordered before the first ndocs are taken
    ndocs: int = 3  # passages per question; with an index, the K of its search and of retrieval_recall@K
    index: str | None = None  # an openrag index folder searched for rows without passages (see passages)
    passages: str = "from_data"  # from_data: a row's own passages, the index's for rows without; from_index: all rows search
    progress: bool = True
    device: str | None = None
    options: dict = field(default_factory=dict)  # engine options from the flags (mode, threshold, w_use, ...)
    baseline: str | None = None  # standard_rag or closed_book: a plain prompt instead of Open-RAG (eval.baseline)
    instruction: str | None = None  # with baseline: the plain prompt's instruction instead of the task's
    backend: BackendOptions = field(default_factory=BackendOptions)  # torch (built-in engine) or vllm, and vLLM's settings

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
        if self.options.get("max_new_tokens", 1) < 1:
            raise ValueError(f"--max_new_tokens must be at least 1, got {self.options['max_new_tokens']}")
        if self.baseline is not None:
            from .baseline import BASELINES

            check_choice(BASELINES, self.baseline, "--baseline")
            if self.index is not None:
                raise ValueError("--baseline reads the data's own passages; drop --index")
            if self.backend.backend != "torch":
                raise ValueError(f"--baseline answers with transformers' generate: drop --backend {self.backend.backend}")
            engine_only = sorted(k for k in self.options if k != "max_new_tokens")
            if engine_only:
                raise ValueError(f"--baseline {self.baseline} answers in a plain prompt: drop --{', --'.join(engine_only)} (Open-RAG options)")
        if self.instruction is not None and self.baseline is None:
            raise ValueError("--instruction sets the plain prompt of --baseline; Open-RAG prompts are fixed by the task")
        if self.index is None and self.options.get("query", "question") != "question":
            raise ValueError(f"--query {self.options['query']} needs --index INDEX_DIR (it says what the index is asked)")


@dataclass
class Loaded:
    questions: list[Question]
    skipped: int
    skipped_by_field: dict[str, int]
    rows: int = 0  # good rows of the dataset read (all shards')


def load_questions(req: EvalRequest, config: RunConfig) -> Loaded:
    """This shard's questions; bad rows are reported (file, line, field) and counted, or raised with strict."""
    from ..data.examples import ErrorLog
    from ..data.readers import read_examples

    if req.split not in (None, "dev"):
        # The readers take a hub dataset's dev split (else validation, test, train); say so rather than
        # silently reading another split than the one asked for.
        raise ValueError(f"--split {req.split}: only the dev split is read; pass a local file of that split as --dataset")
    errors = ErrorLog(strict=req.strict)
    examples = read_examples(req.dataset, task=req.task_info.hub_config or req.task, strict=req.strict, errors=errors,
                             dataset=req.task, passages_required=req.index is None)
    rows = 0

    def counted():
        nonlocal rows
        for example in examples:
            rows += 1
            yield example

    questions = prepare_questions(counted(), config)
    if not rows:
        bad = f"; {errors.count} bad rows skipped (see the messages above)" if errors.count else ""
        raise ValueError(f"{req.dataset}: no question to answer{bad}; check the file, or --task and --split")
    return Loaded(questions, errors.count, errors.by_field(), rows)


def run_config(req: EvalRequest, output_file: Path | None = None) -> RunConfig:
    settings = {"model": req.model_name, **dataset_identity(req.dataset), **req.options}
    if req.baseline is not None:
        settings["baseline"] = req.baseline
    if req.backend.backend != "torch":  # recorded only when not the default, so older runs resume as they were
        settings["backend"] = req.backend.backend
    return RunConfig(
        output_file=output_file or req.output_file,
        task=req.task_info,
        metric=req.metric,
        ndocs=req.ndocs,
        ranker=req.ranker,
        device=req.device,
        index=req.index,
        passages=req.passages,
        limit=req.limit,
        resume=req.resume,
        overwrite=req.overwrite,
        world_size=req.world_size,
        rank=req.rank,
        batch_size=req.batch_size,
        progress=req.progress,
        settings=settings,
    )


AnswererFactory = Callable[[EvalRequest, bool], tuple[Answerer, dict]]  # (request, both answers?) -> answerer, settings


@contextlib.contextmanager
def _writing(config: RunConfig):
    """Hold this shard's output file: checked, locked against a second run, and (before any loading) refused
    when it holds answers this run may not replace or add to (runner.check_output)."""
    from ..outputs import check_output_path, output_lock

    path = check_output_path(shard_path(config.output_file, config.rank, config.world_size), "--output_file")
    with output_lock(path, "openrag eval"):
        check_output(config, loaded=False)
        yield


def _answer_all(req: EvalRequest, config: RunConfig, make_answerer: AnswererFactory | None, both: bool) -> dict:
    loaded = load_questions(req, config)
    if loaded.skipped:
        fields = ", ".join(f"{k}: {v}" for k, v in sorted(loaded.skipped_by_field.items()))
        print(f"openrag eval: skipped {loaded.skipped} bad rows ({fields}); --strict stops at the first", file=sys.stderr)
    if make_answerer is None and req.baseline is not None:
        from .baseline import baseline_answerer_factory as make_answerer
    elif make_answerer is None:
        from .answerer import engine_answerer_factory as make_answerer
    t0 = time.perf_counter()
    answerer, settings = make_answerer(req, both)
    load_seconds = time.perf_counter() - t0
    config.settings.update(settings)
    summary = run_shard(config, loaded.questions, answerer, load_seconds=load_seconds, skipped=loaded.skipped_by_field)
    if config.world_size > 1:
        combined = combine_shards(config.output_file, config.world_size)
        if combined is None:
            print(f"openrag eval: rank {config.rank} done; the combined result is written when every rank has finished", file=sys.stderr)
            return summary
        return combined
    return summary


def evaluate(req: EvalRequest, make_answerer: AnswererFactory | None = None) -> dict:
    """Answer every question of the task (this rank's share), write the JSON lines and the summary."""
    config = run_config(req)
    with _writing(config):
        return _answer_all(req, config, make_answerer, both=False)


def sweep_paths(output_file: Path) -> dict[str, Path]:
    stem = metrics_path(output_file).name[: -len(".metrics.json")]
    return {ext: Path(output_file).with_name(f"{stem}.sweep.{ext}") for ext in ("md", "json", "png")}


def evaluate_sweep(req: EvalRequest, rules: Sequence[str] = RULES, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, make_answerer: AnswererFactory | None = None) -> tuple[dict, dict[str, Path] | None]:
    """Generate both answers per question once, then score every (rule, threshold); table, JSON and plot."""
    import json

    if req.baseline is not None:
        raise ValueError("--baseline answers without reflection tokens: it has no retrieval decision to sweep")
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise unknown("retrieval rule(s)", bad, RULES)
    config = run_config(req)
    with _writing(config):
        summary = _answer_all(req, config, make_answerer, both=True)
        if not summary.get("complete") or (req.world_size > 1 and "wall_seconds" not in summary):
            return summary, None
        records = read_records(req.output_file)
        points = sweep(records, rules, thresholds)
        paths = sweep_paths(req.output_file)
        table = sweep_table(points, req.metric)
        paths["md"].write_text(f"# {req.task}: accuracy against retrieval frequency ({len(records)} questions)\n\n{table}")
        paths["json"].write_text(json.dumps(sweep_json(points), indent=2) + "\n")
        plot_sweep(points, req.metric, paths["png"], title=f"{req.task}: {req.model_name}, {len(records)} questions")
        return summary, paths


def combine(output_file: Path, world_size: int) -> dict:
    """``openrag eval combine``: merge finished shards by hand (each rank also tries when it finishes)."""
    combined = combine_shards(Path(output_file), world_size)
    if combined is None:
        missing = [str(shard_path(output_file, r, world_size)) for r in range(world_size) if not _complete(shard_path(output_file, r, world_size))]
        raise FileNotFoundError(f"shards not finished yet: {', '.join(missing)}")
    return combined


def _complete(path: Path) -> bool:
    m = metrics_path(path)
    return m.exists() and bool(read_json_object(m, "rerun this shard with --resume").get("complete"))


