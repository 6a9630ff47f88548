"""``openrag index``: build a BM25, dense or hybrid index over a corpus of the user's own documents (chunk by chunk,
resumable, shardable), merge a sharded build, or adopt a prebuilt faiss index (FlashRAG's)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openrag.retrieval.index import KINDS, BuildOptions, DenseSettings, IndexSettings, SearchSettings

    parser.add_argument("--corpus", default=None,
                        help="JSON lines {id, title, text} or {id, contents}, a JSON list, or a folder of .txt/.md files")
    parser.add_argument("--output", required=True, help="the index folder to write")
    parser.add_argument("--kind", choices=tuple(KINDS), default=None,
                        help="; ".join(f"{k.name}: {k.help}" for k in KINDS.values()) +
                        " (default bm25; dense with --faiss_index)")
    parser.add_argument("--passage_words", type=int, default=IndexSettings.passage_words,
                        help="folder corpora: words per passage (default %(default)s)")
    parser.add_argument("--passage_overlap", type=int, default=IndexSettings.passage_overlap,
                        help="folder corpora: words shared by neighbours (default %(default)s)")
    parser.add_argument("--dense_model", default=None,
                        help="sentence-transformers folder or name (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--faiss", default=DenseSettings.faiss,
                        help="dense: a faiss index_factory string, e.g. Flat (exact, default), HNSW32, SQ8, IVF4096,PQ64")
    parser.add_argument("--train_sample", type=int, default=DenseSettings.train_sample,
                        help="dense: vectors that train an IVF/PQ/SQ index (drawn with seed 0; default %(default)s)")
    parser.add_argument("--faiss_params", default=SearchSettings.faiss_params,
                        help="dense: search-time faiss parameters kept as the index's default, e.g. nprobe=64 (IVF) or "
                             "efSearch=128 (HNSW); changing them needs no rebuild (default for IVF indexes of N lists: "
                             "nprobe=ceil(sqrt(N)), at least 16, at most N)")
    parser.add_argument("--faiss_index", default=None,
                        help="dense: adopt this prebuilt faiss file (FlashRAG's e5_Flat.index; row i = passage i of "
                             "--corpus) instead of embedding; give its encoder with --dense_model")
    parser.add_argument("--query_prefix", default=None,
                        help="dense: text put before each query (default: FlashRAG's for e5 and bge encoders, else none)")
    parser.add_argument("--passage_prefix", default=None,
                        help="dense: text put before each passage when embedding (default: 'passage: ' for e5, else none)")
    parser.add_argument("--batch_size", type=int, default=BuildOptions.batch_size, help="dense: passages embedded per batch")
    parser.add_argument("--device", default=None, help="dense: cpu, cuda, cuda:1, ... (default: the best there is)")
    parser.add_argument("--rrf_k", type=int, default=IndexSettings.rrf_k, help="hybrid: reciprocal-rank fusion constant (default %(default)s)")
    parser.add_argument("--chunk_size", type=int, default=BuildOptions.chunk_size,
                        help="passages per chunk: the unit of memory and of resuming a stopped build (default %(default)s)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="embed only part I of N (from 0) of the chunks and write a shard folder; then --merge")
    parser.add_argument("--merge", nargs="+", default=None, metavar="SHARD",
                        help="assemble the index at --output from the N shard folders of one --shard build")
    parser.add_argument("--rerank", default=SearchSettings.rerank,
                        help="a sentence-transformers cross-encoder (folder or name) that re-scores the first "
                             "--rerank_depth passages of each search; kept as the index's default")
    parser.add_argument("--rerank_depth", type=int, default=SearchSettings.rerank_depth, help="passages the cross-encoder re-scores (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an index built with other settings or over a changed corpus")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace):
    from openrag.retrieval import DenseSettings, IndexSettings
    from openrag.retrieval.dense import BUNDLED_ENCODER, default_prefixes
    from openrag.retrieval.index import prebuilt_settings

    if args.faiss_index and args.kind == "bm25":
        raise ValueError("--faiss_index adopts a dense index: give --kind dense (the default with it) or hybrid")
    model = args.dense_model or BUNDLED_ENCODER
    query_prefix, passage_prefix = default_prefixes(model)
    dense = DenseSettings(model=model, faiss=args.faiss, train_sample=args.train_sample,
                          query_prefix=query_prefix if args.query_prefix is None else args.query_prefix,
                          passage_prefix=passage_prefix if args.passage_prefix is None else args.passage_prefix)
    settings = IndexSettings(kind=args.kind or "bm25", passage_words=args.passage_words,
                             passage_overlap=args.passage_overlap, dense=dense, rrf_k=args.rrf_k)
    return prebuilt_settings(settings) if args.faiss_index else settings


def search_from_args(args: argparse.Namespace):
    from openrag.retrieval import SearchSettings

    return SearchSettings(faiss_params=args.faiss_params, rerank=args.rerank, rerank_depth=args.rerank_depth)


def run(args: argparse.Namespace) -> int:
    from openrag.outputs import check_output_path, output_lock

    with output_lock(check_output_path(args.output, "--output", folder=True), "openrag index"):  # one build per folder
        return _build(args)


def _build(args: argparse.Namespace) -> int:
    from openrag.retrieval import build_index, existing_index_matches, merge_index, update_search_settings
    from openrag.retrieval.build import parse_shard

    search = search_from_args(args)
    if args.merge:
        if args.corpus or args.shard:
            raise ValueError("--merge assembles finished shard folders: give it without --corpus and --shard")
        with merge_index(args.merge, args.output, overwrite=args.overwrite, show_progress=not args.quiet,
                         search=search) as index:
            print(f"merged {len(args.merge)} shards ({len(index)} passages) into {args.output} ({index.kind})")
        return 0
    if not args.corpus:
        raise ValueError("--corpus is required (or --merge SHARD_FOLDERS... to assemble a sharded build)")
    settings = settings_from_args(args)
    shard = parse_shard(args.shard) if args.shard else None
    if shard is None and not args.overwrite and existing_index_matches(args.output, args.corpus, settings):
        if update_search_settings(args.output, search):
            print(f"{args.output} is up to date ({settings.kind} index of {args.corpus}); search settings updated")
        else:
            print(f"{args.output} is up to date ({settings.kind} index of {args.corpus}); nothing to do")
        return 0
    index = build_index(args.corpus, args.output, settings, overwrite=args.overwrite, batch_size=args.batch_size,
                        device=args.device, show_progress=not args.quiet, chunk_size=args.chunk_size, shard=shard,
                        faiss_index=args.faiss_index, search=search)
    if index is None:
        print(f"shard {shard[0]}/{shard[1]} of {args.corpus} is in {args.output}; when all {shard[1]} are done: "
              f"openrag index --merge SHARD_FOLDERS... --output INDEX")
        return 0
    with index:
        print(f"indexed {len(index)} passages of {args.corpus} into {args.output} "
              f"({index.kind}, {index.manifest['build_seconds']:.1f} s)")
    return 0
