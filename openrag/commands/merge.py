"""``openrag merge --base_model B --model_path CKPT [--output_dir OUT]``: one standalone checkpoint."""

from __future__ import annotations

import argparse

from ..precision import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base_model", default=None, help="the dense base the checkpoint was trained on (default: the one it names)")
    parser.add_argument("--model_path", required=True, help="a training output folder or one of its checkpoint-N folders")
    parser.add_argument("--output_dir", default=None, help="where the merged model goes (default: MODEL_PATH/merged)")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", *DTYPES),
        help="dtype of the saved weights, and of the merge's own copy; auto: the base checkpoint's own "
             "(the LoRA and new token rows are added in float32 and rounded once)",
    )


def run(args: argparse.Namespace) -> int:
    from ..model.merge import merge

    out = merge(args.model_path, base_model=args.base_model, output_dir=args.output_dir, dtype=args.dtype)
    print(f"merged model written to {out}")
    return 0
