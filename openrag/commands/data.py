"""``openrag data build|stats``: build Open-RAG training instances from QA data, or describe a training file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bundled_names import SMOLLM2_NAME
from ..precision import DTYPE_HELP, DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="QA files -> training instances (JSON lines, released conversation format) and a stats report",
        description="Build reflection-token training instances. An input is a file in any format of "
        "../shared/data (format sniffed from its fields) or a hub name; append :skip=N to leave out its "
        "first N rows, :limit=M to keep only M rows (e.g. dev.jsonl:skip=100).",
    )
    build.add_argument("inputs", nargs="+", help="QA files or hub names, each optionally with :skip=N / :limit=M")
    build.add_argument("--output", required=True, help="output JSON lines; the stats go to OUTPUT with .stats.json")
    build.add_argument("--seed", type=int, default=0, help="seed of the shuffle and of --max_per_dataset sampling")
    build.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                       help="evaluation files (windows allowed, e.g. dev.jsonl:limit=100) whose questions must not be trained on")
    build.add_argument("--strict", action="store_true", help="stop at the first bad row instead of counting and skipping it")
    build.add_argument("--tokenizer", default=SMOLLM2_NAME, help="tokenizer for the length report (checkpoint folder, hub name or 'smollm2'); 'none' to skip")
    build.add_argument("--max_length", type=int, default=4096, help="training max length; the report counts instances it would shorten")
    build.add_argument("--max_per_dataset", type=int, default=None, help="keep at most this many questions per dataset (seeded sample)")
    build.add_argument("--distractors", type=int, default=None, help="hard distractor instances per question (default: as many as its gold instances)")
    build.add_argument("--distractor_answers", action="store_true", help="distractor instances go on to the answer and utility (default: they end at [Irrelevant])")
    build.add_argument("--no_facts", action="store_true", help="no single-hop instances from the facts a row names (MuSiQue hops, 2Wiki evidences)")
    build.add_argument("--max_facts", type=int, default=None, help="single-hop facts used per question at most (default: all)")
    build.add_argument("--max_gold", type=int, default=4, help="single gold-passage instances per question at most (first in reasoning or rank order)")
    build.add_argument("--no_chain", action="store_true", help="no Knowledge 1 [SEP] Knowledge 2 gold-chain instances")
    build.add_argument("--no_no_retrieval", action="store_true", help="no [No Retrieval] instances")
    build.add_argument("--held_out", type=int, default=0, metavar="N",
                       help="N questions (a seeded sample) kept out of training: their instances go to OUTPUT with .held_out.jsonl, "
                            "for `openrag train --eval_data_path` (the run's held-out check)")
    build.add_argument("--critic", default=None, metavar="MODEL", help="causal LM (any openrag.load_model checkpoint) that re-labels support and utility")
    build.add_argument("--device", default=None, help="device of the critic (default: cuda if available)")
    build.add_argument("--dtype", default=None, choices=DTYPES, help=f"the critic's dtype: {DTYPE_HELP}; the report "
                       "records it, since its labels can differ between dtypes (float32 labels the same on every CPU)")

    stats = sub.add_parser("stats", help="instances per reflection token and token lengths of a training file or hub dataset")
    stats.add_argument("data", help="JSON lines of openrag data build, or the released shayekh/openrag_train_data (hub name or local file)")
    stats.add_argument("--subset", default=None, help="hub config of a training dataset (moe or dense)")
    stats.add_argument("--tokenizer", default=SMOLLM2_NAME)
    stats.add_argument("--max_length", type=int, default=4096)
    stats.add_argument("--strict", action="store_true")


def load_tokenizer(name: str):
    """A tokenizer with the reflection tokens added (a copy; nothing is saved)."""
    from ..model.loading import read_tokenizer, resolve_folder
    from ..model.reflection import add_reflection_tokens

    tokenizer = read_tokenizer(resolve_folder(name))
    add_reflection_tokens(None, tokenizer)
    return tokenizer


def stats_path(output: str | Path, suffix: str = ".stats.json") -> Path:
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(stem + suffix)


def held_out_path(output: str | Path) -> Path:
    return stats_path(output, ".held_out.jsonl")


def run_build(args: argparse.Namespace) -> int:
    from ..data.build import BuildConfig, Exclusion, build, build_report
    from ..data.examples import ErrorLog
    from ..outputs import check_output_path, write_json, write_jsonl

    check_output_path(args.output, "--output")  # before the work, not after it
    if args.held_out:
        check_output_path(held_out_path(args.output), "--held_out's file")
    config = BuildConfig(
        seed=args.seed,
        distractors=args.distractors,
        max_gold=args.max_gold,
        max_per_dataset=args.max_per_dataset,
        chain=not args.no_chain,
        no_retrieval=not args.no_no_retrieval,
        distractor_answers=args.distractor_answers,
        facts=not args.no_facts,
        max_facts=args.max_facts,
        held_out=args.held_out,
    )
    exclude = Exclusion.from_files(args.exclude)
    critic = None
    if args.critic:
        from ..data.critic import Critic

        critic = Critic.load(args.critic, device=args.device, dtype=args.dtype)
    result = build(args.inputs, config, exclude=exclude, errors=ErrorLog(strict=args.strict), critic=critic)
    if not result.instances:
        raise ValueError("no instance was built: every row was excluded or bad (see the messages above)")
    write_jsonl(args.output, (inst.to_row() for inst in result.instances))
    if args.held_out:
        write_jsonl(held_out_path(args.output), (inst.to_row() for inst in result.held_out))
    tokenizer = None if args.tokenizer.lower() == "none" else load_tokenizer(args.tokenizer)
    report = build_report(result, tokenizer, args.tokenizer, args.max_length)
    report.update(inputs=args.inputs, exclude=args.exclude, seed=args.seed, critic=args.critic,
                  critic_dtype=critic and critic.dtype, output=str(args.output))
    write_json(stats_path(args.output), report)
    print_report(report)
    print(f"wrote {report['instances']} instances to {args.output} (report: {stats_path(args.output)})")
    if args.held_out:
        print(f"wrote {report['held_out_instances']} instances of {report['held_out_questions']} held-out questions to {held_out_path(args.output)}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ..data.build import length_stats, token_counts
    from ..data.tokenize import load_training_instances

    instances = load_training_instances(args.data, args.subset, strict=args.strict)
    report = {"instances": len(instances), "per_token": token_counts(i["output"] for i in instances)}
    if args.tokenizer.lower() != "none":
        tokenizer = load_tokenizer(args.tokenizer)
        report["tokens"] = {"tokenizer": args.tokenizer, **length_stats(((i["input"], i["output"]) for i in instances), tokenizer, args.max_length)}
    print(json.dumps(report, indent=2))
    return 0


def print_report(report: dict) -> None:
    out = sys.stdout
    out.write(f"questions {report['questions']}, instances {report['instances']}, "
              f"excluded {report['excluded']}, repeated questions skipped {report['duplicates']}, bad rows skipped {report['rows_skipped']}\n")
    for name, entry in sorted(report["per_dataset"].items()):
        kinds = ", ".join(f"{k} {v}" for k, v in entry["kinds"].items())
        out.write(f"  {name:<16} questions {entry['questions']:>6}  instances {entry['instances']:>7}  ({kinds})\n")
    out.write("  questions per retrieval label: " + ", ".join(f"{t} {n}" for t, n in report["questions_per_decision"].items()) + "\n")
    out.write("  per token: " + ", ".join(f"{t} {n}" for t, n in report["per_token"].items()) + "\n")
    if report["skipped_by_field"]:
        out.write("  skipped rows by field: " + ", ".join(f"{f} {n}" for f, n in report["skipped_by_field"].items()) + "\n")
    tokens = report.get("tokens")
    if tokens and tokens.get("instances"):
        out.write(f"  tokens ({tokens['tokenizer']}): mean {tokens['mean']}, p50 {tokens['p50']}, p95 {tokens['p95']}, "
                  f"max {tokens['max']}; {tokens['truncated']} over max_length {tokens['max_length']}\n")


def run(args: argparse.Namespace) -> int:
    return run_build(args) if args.data_command == "build" else run_stats(args)
