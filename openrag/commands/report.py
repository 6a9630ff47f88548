"""``openrag report A.metrics.json B.metrics.json ...``: one markdown table and one bar chart of several runs."""

from __future__ import annotations

import argparse

PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # what the chart can be written as


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics_files", nargs="+", help="the .metrics.json files that `openrag eval` wrote")
    parser.add_argument("--output", default=None, help="write the markdown table here too (default: print only)")
    parser.add_argument("--plot", default=None, help=f"write a bar chart of the scores here ({', '.join(PLOT_SUFFIXES)})")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..eval.report import bar_chart, load_summaries, markdown_table
    from ..outputs import check_output_path, write_atomic

    for flag, path in (("--output", args.output), ("--plot", args.plot)):  # before the work, not after it
        if path:
            check_output_path(path, flag)
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"--plot {args.plot}: give a file name ending in {', '.join(PLOT_SUFFIXES)}")
    runs = load_summaries(args.metrics_files)
    table = markdown_table(runs)
    print(table, end="")
    if args.output:
        with write_atomic(args.output) as f:
            f.write(table)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        print(f"chart: {bar_chart(runs, Path(args.plot))}")
    return 0
