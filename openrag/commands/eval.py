"""``openrag eval``: the paper's evaluation, with the seed's flags (docs/method.md section 8).

    openrag eval --model_name ./checkpoints/merged/ --task hotpotqa --dataset shayekh/openrag_bench \\
        --mode adaptive_retrieval --threshold 0.0 --metric hotpotem --ndocs 3 --w_use 0.5 \\
        --use_groundness --use_utility --use_seqscore --max_new_tokens 100 --output_file ./eval/hotpotqa.jsonl
    openrag eval sweep --task hotpotqa --dataset dev.jsonl --output_file ./eval/hotpotqa.sweep.jsonl
    openrag eval --baseline standard_rag --model_name smollm2 --task hotpotqa --dataset dev.jsonl --ndocs 3 --max_new_tokens 32
    openrag eval combine --output_file ./eval/hotpotqa.jsonl --world_size 4
    openrag eval --task 2wikimultihopqa --dataset 2wiki_dev200.jsonl --index wiki.index --top_k 3 --query question+answer
"""

from __future__ import annotations

import argparse
import os

ACTIONS = ("run", "sweep", "combine")


def _env_int(name: str, default: int, flag: str) -> int:
    """The whole number in environment variable ``name`` (unset or empty: ``default``); read in ``run``, not
    when the parser is built, so that a bad value is the command's one-line error naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a whole number (the default of {flag}), got {value!r}; "
                         f"set it to one, unset it, or give {flag}") from None


def _shard_defaults(args: argparse.Namespace) -> None:
    """--world_size and --rank not given: $WORLD_SIZE (else 1) and $RANK (else 0)."""
    if args.world_size is None:
        args.world_size = _env_int("WORLD_SIZE", 1, "--world_size")
    if args.rank is None:
        args.rank = _env_int("RANK", 0, "--rank")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..answer.backends import add_backend_flags
    from ..answer.options import add_option_arguments
    from ..eval.request import add_request_flags
    from ..eval.sweep import DEFAULT_THRESHOLDS, RULES

    parser.add_argument(
        "action", nargs="?", default="run", choices=ACTIONS,
        help="run (default): answer and score; sweep: one generation pass scored at many thresholds; combine: merge finished shards",
    )
    # The flags of EvalRequest's fields (openrag.eval.request); --world_size/--rank not given: $WORLD_SIZE/$RANK.
    groups = add_request_flags(parser, defaults={"world_size": None, "rank": None})
    groups["data"].add_argument("--top_k", type=int, metavar="K", default=None, help="with --index: passages retrieved and used (sets --ndocs)")
    groups["output and processes"].add_argument("--no_progress", action="store_true", help="no progress bar")
    add_option_arguments(parser, "eval")  # --mode, --threshold, --ndocs, --use_*, ... (openrag.answer.options)
    add_backend_flags(parser)  # --backend auto|torch|vllm and vLLM's settings (openrag.answer.backends)

    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--thresholds", default=None, help="comma-separated thresholds (default "
                       f"{','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)})")
    sweep.add_argument("--rules", default=",".join(RULES), help="comma-separated rules to sweep")


def _request(args: argparse.Namespace):
    from ..answer.backends import backend_options
    from ..answer.options import default_of, given_options
    from ..eval.request import EvalRequest, request_flag_fields
    from ..tasks import EVAL_TASKS

    _shard_defaults(args)
    if not args.task:
        raise ValueError("--task is required; choose one of " + ", ".join(EVAL_TASKS))
    if args.top_k is not None and not args.index:
        raise ValueError("--top_k needs --index (with the data's passages, --ndocs says how many are used)")
    options = given_options(args, "eval")  # the answering flags given (the others keep eval's defaults)
    ndocs = options.pop("ndocs", default_of("ndocs"))  # the request's own field: passages per question
    return EvalRequest(**{f.name: getattr(args, f.name) for f in request_flag_fields()},
                       ndocs=ndocs if args.top_k is None else args.top_k, progress=not args.no_progress, options=options,
                       backend=backend_options(args, batches=not args.baseline))


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--thresholds must be comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    import json

    from ..eval import evaluate as ev
    from ..eval.runner import format_summary, metrics_path, shard_path

    _shard_defaults(args)
    if args.action == "combine":
        if not args.output_file or args.world_size < 2:
            raise ValueError("combine needs --output_file and --world_size N (N >= 2) of the sharded run")
        summary = ev.combine(args.output_file, args.world_size)
        print(json.dumps(summary, indent=2))
        print(format_summary(summary))
        return 0
    req = _request(args)
    if args.action == "sweep":
        from ..eval.sweep import DEFAULT_THRESHOLDS

        thresholds = _floats(args.thresholds) if args.thresholds else list(DEFAULT_THRESHOLDS)
        summary, paths = ev.evaluate_sweep(req, [r.strip() for r in args.rules.split(",") if r.strip()], thresholds)
        if paths:
            print(paths["md"].read_text(), end="")
            print(f"sweep: {paths['md']}, {paths['json']}, {paths['png']}")
        return 0
    summary = ev.evaluate(req)
    print(json.dumps(summary, indent=2))
    print(format_summary(summary))
    combined = req.world_size == 1 or "wall_seconds" in summary
    answers = req.output_file if combined else shard_path(req.output_file, req.rank, req.world_size)
    print(f"answers: {answers}  summary: {metrics_path(answers)}" + ("" if combined else "  (this rank's share)"))
    return 0
