"""``openrag index``: build a BM25, dense or hybrid index over a corpus of the user's own documents."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrag.retrieval.index import KINDS

    parser.add_argument("--corpus", required=True,
                        help="JSON lines {id, title, text} or {id, contents}, a JSON list, or a folder of .txt/.md files")
    parser.add_argument("--output", required=True, help="the index folder to write")
    parser.add_argument("--kind", choices=tuple(KINDS), default="bm25",
                        help="; ".join(f"{k.name}: {k.help}" for k in KINDS.values()) + " (default bm25)")
    parser.add_argument("--passage_words", type=int, default=100, help="folder corpora: words per passage (default 100)")
    parser.add_argument("--passage_overlap", type=int, default=20, help="folder corpora: words shared by neighbours (default 20)")
    parser.add_argument("--dense_model", default=None,
                        help="sentence-transformers folder or name (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--batch_size", type=int, default=64, help="dense: passages embedded per batch")
    parser.add_argument("--device", default=None, help="dense: cpu, cuda, ... (default: the best there is)")
    parser.add_argument("--rrf_k", type=int, default=60, help="hybrid: reciprocal-rank fusion constant (default 60)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an index built with other settings or over a changed corpus")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace):
    from openrag.retrieval import DenseSettings, IndexSettings

    dense = DenseSettings(model=args.dense_model) if args.dense_model else DenseSettings()
    return IndexSettings(kind=args.kind, passage_words=args.passage_words, passage_overlap=args.passage_overlap,
                         dense=dense, rrf_k=args.rrf_k)


def run(args: argparse.Namespace) -> int:
    from openrag.retrieval import build_index, existing_index_matches

    settings = settings_from_args(args)
    if not args.overwrite and existing_index_matches(args.output, args.corpus, settings):
        print(f"{args.output} is up to date ({settings.kind} index of {args.corpus}); nothing to do")
        return 0
    index = build_index(args.corpus, args.output, settings, overwrite=args.overwrite, batch_size=args.batch_size,
                        device=args.device, show_progress=not args.quiet)
    print(f"indexed {len(index)} passages of {args.corpus} into {args.output} "
          f"({index.kind}, {index.manifest['build_seconds']:.1f} s)")
    return 0
