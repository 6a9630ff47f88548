"""``openrag eval`` as a library call: read the task's data, load the model, answer, summarise, combine.

The command-line module only parses flags into :class:`~openrag.eval.request.EvalRequest` and calls
:func:`evaluate` or :func:`evaluate_sweep`; tests call them with a fake answerer in place of the model.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ..jsonfiles import read_json_object
from ..outputs import write_atomic, write_json
from ..registry import unknown
from .request import EvalRequest
from .runner import Answerer, Question, check_output, combine_shards, metrics_path, prepare_questions, read_records, run_shard, shard_path
from .sweep import DEFAULT_THRESHOLDS, RULES, plot_sweep, sweep, sweep_json, sweep_table


@dataclass
class Loaded:
    questions: list[Question]
    skipped: int
    skipped_by_field: dict[str, int]
    rows: int = 0  # good rows of the dataset read (all shards')


def load_questions(req: EvalRequest) -> Loaded:
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

    questions = prepare_questions(counted(), req)
    if not rows:
        bad = f"; {errors.count} bad rows skipped (see the messages above)" if errors.count else ""
        raise ValueError(f"{req.dataset}: no question to answer{bad}; check the file, or --task and --split")
    return Loaded(questions, errors.count, errors.by_field(), rows)


AnswererFactory = Callable[[EvalRequest, bool], tuple[Answerer, dict]]  # (request, both answers?) -> answerer, settings


@contextlib.contextmanager
def _writing(req: EvalRequest):
    """Hold this shard's output file: checked, locked against a second run, and (before any loading) refused
    when it holds answers this run may not replace or add to (runner.check_output)."""
    from ..outputs import check_output_path, output_lock

    path = check_output_path(shard_path(req.output_file, req.rank, req.world_size), "--output_file")
    with output_lock(path, "openrag eval"):
        check_output(req, loaded=False)
        yield


def _answer_all(req: EvalRequest, make_answerer: AnswererFactory | None, both: bool) -> dict:
    loaded = load_questions(req)
    if loaded.skipped:
        fields = ", ".join(f"{k}: {v}" for k, v in sorted(loaded.skipped_by_field.items()))
        print(f"openrag eval: skipped {loaded.skipped} bad rows ({fields}); --strict stops at the first", file=sys.stderr)
    if make_answerer is None and req.baseline is not None:
        from .baseline import baseline_answerer_factory as make_answerer
    elif make_answerer is None:
        from .answerer import pipeline_answerer_factory as make_answerer
    t0 = time.perf_counter()
    answerer, settings = make_answerer(req, both)
    load_seconds = time.perf_counter() - t0
    req.settings.update(settings)
    summary = run_shard(req, loaded.questions, answerer, load_seconds=load_seconds, skipped=loaded.skipped_by_field)
    if req.world_size > 1:
        combined = combine_shards(req.output_file, req.world_size)
        if combined is None:
            print(f"openrag eval: rank {req.rank} done; the combined result is written when every rank has finished", file=sys.stderr)
            return summary
        return combined
    return summary


def evaluate(req: EvalRequest, make_answerer: AnswererFactory | None = None) -> dict:
    """Answer every question of the task (this rank's share), write the JSON lines and the summary."""
    req = replace(req)  # a copy: the answerer's settings are added to it (EvalRequest.settings), not to the caller's
    with _writing(req):
        return _answer_all(req, make_answerer, both=False)


def sweep_paths(output_file: Path) -> dict[str, Path]:
    stem = metrics_path(output_file).name[: -len(".metrics.json")]
    return {ext: Path(output_file).with_name(f"{stem}.sweep.{ext}") for ext in ("md", "json", "png")}


def evaluate_sweep(req: EvalRequest, rules: Sequence[str] = RULES, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, make_answerer: AnswererFactory | None = None) -> tuple[dict, dict[str, Path] | None]:
    """Generate both answers per question once, then score every (rule, threshold); table, JSON and plot."""
    if req.baseline is not None:
        raise ValueError("--baseline answers without reflection tokens: it has no retrieval decision to sweep")
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise unknown("retrieval rule(s)", bad, RULES)
    req = replace(req)  # a copy, as in evaluate
    with _writing(req):
        summary = _answer_all(req, make_answerer, both=True)
        if not summary.get("complete") or (req.world_size > 1 and "wall_seconds" not in summary):
            return summary, None
        records = read_records(req.output_file)
        points = sweep(records, rules, thresholds)
        paths = sweep_paths(req.output_file)
        table = sweep_table(points, req.metric)
        with write_atomic(paths["md"]) as f:
            f.write(f"# {req.task}: accuracy against retrieval frequency ({len(records)} questions)\n\n{table}")
        write_json(paths["json"], sweep_json(points))
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


