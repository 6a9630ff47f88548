"""Retrieval at Wikipedia scale (issue 17): build time and peak memory, query latency, recall of compressed faiss
indexes against the exact one, and the extrapolation to the 21M passages of wiki-18.

    python benchmarks/bench_scale.py --sizes 100000 1000000 [--dense_sample 2048] [--chunk_size 10000] \\
        [--recall_pool 14000] [--gpu_rate PASSAGES_PER_S] [--threads 1] [--output scale.json]

1. For each size N, a generated corpus (100-word passages drawn from the 2WikiMultihopQA unigram distribution, as
   bench_retrieval.py) is indexed by `build_index` in a fresh process each time, so that its peak memory (VmHWM) is
   the build's own:
   - bm25: real, end to end.
   - dense (Flat, then each compressed factory string): the first ``--dense_sample`` passages (rounded up to whole
     chunks) are embedded for real with the bundled all-MiniLM-L6-v2; every later chunk gets seeded random unit
     vectors, and its time is recorded per chunk. The build time reported is the measured one, less the time spent
     making random vectors, plus the missing passages at the measured embedding rate ("build_s", extrapolated);
     the measured time is kept beside it. Compressed builds reuse the real sample's vectors (cached), so their
     extra cost over Flat is training + adding. Memory is real: random vectors take the space real ones do.
   Each index is then opened and queried: one query at a time, p50/p95 over ``--single`` queries (real query
   encoding, search over all N vectors, whose values do not change the cost of Flat, SQ and PQ scans; IVF list
   sizes and HNSW graphs do depend on the data, so read those latencies as indicative).
2. Recall of each compressed index against the exact one is measured on real text: the distinct paragraphs of
   ../shared/data (HotpotQA, 2Wiki, MuSiQue, PopQA, ARC contexts; up to ``--recall_pool``) embedded for real,
   queried with the datasets' questions: recall@10 = |top-10 of the index & top-10 of Flat| / 10, over a sweep of
   nprobe / efSearch. IVF list counts are scaled to the pool (about 4 sqrt(N), a power of two).
3. The extrapolation to 21,015,324 passages (wiki-18) is written out with its arithmetic: peak memory along the
   line through the smallest and the largest size, disk and non-embedding build time in proportion to N
   (an upper bound for trained indexes: training on at most --train_sample vectors does not grow with N), embedding
   time at the measured rate (CPU) or at --gpu_rate (passages/s of --device cuda, measured on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retrieval import DATA, generate_corpus, machine, percentiles, read_2wiki, word_counts, write_report  # noqa: E402

from openrag.retrieval import IndexSettings, SearchSettings, build_index, open_index  # noqa: E402
from openrag.retrieval.dense import DenseSettings, DenseWriter, load_encoder, new_faiss_index, set_search_parameters  # noqa: E402

WIKI18 = 21_015_324
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# --- one build in a child process ----------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def child(spec: dict) -> dict:
    """Build one index as ``spec`` says; the sampled encoding is patched into DenseWriter.add."""
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    timings = {"real_passages": 0, "real_seconds": 0.0, "synthetic_seconds": 0.0, "chunk_seconds": []}
    cache = Path(spec["cache"])
    real_add = DenseWriter.add

    def add(self, chunks, k, texts):
        started = time.perf_counter()
        cached = cache / f"real-{k:06d}.npy"
        target = chunks / f"dense-{k:06d}.npy"
        if k * spec["chunk_size"] < spec["dense_sample"]:
            if cached.exists():
                shutil.copyfile(cached, target)
            else:
                real_add(self, chunks, k, texts)
                timings["real_passages"] += len(texts)
                timings["real_seconds"] += time.perf_counter() - started
                shutil.copyfile(target, cached)
                (cache / "dimension").write_text(str(np.load(target, mmap_mode="r").shape[1]))
        else:
            dimension = int((cache / "dimension").read_text())
            vectors = np.random.default_rng(k).standard_normal((len(texts), dimension), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            np.save(target, vectors, allow_pickle=False)
            timings["synthetic_seconds"] += time.perf_counter() - started
        timings["chunk_seconds"].append(round(time.perf_counter() - started, 3))

    DenseWriter.add = add
    settings = IndexSettings(kind=spec["kind"], dense=DenseSettings(faiss=spec.get("faiss", "Flat"),
                                                                     train_sample=spec.get("train_sample", 200_000)))
    started = time.perf_counter()
    build_index(spec["corpus"], spec["output"], settings, chunk_size=spec["chunk_size"], show_progress=False)
    measured = time.perf_counter() - started
    out = {"build_s_measured": round(measured, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
           "disk_mb": round(folder_mb(Path(spec["output"])), 2)}
    if spec["kind"] == "dense":
        chunks = timings.pop("chunk_seconds")
        out["chunk_s_median"] = round(float(np.median(chunks)), 3) if chunks else None
        out.update({k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()})
    return out


def run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child build failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- measurements ----------------------------------------------------------------------------------------------------

def latency(output: Path, queries: list[str], single: int, search: SearchSettings | None = None) -> dict:
    seconds = []
    with open_index(output, search=search) as index:
        index.search(queries[:1], 10)  # warm-up: loads the encoder of a dense index
        for query in queries[1:single + 1]:
            started = time.perf_counter()
            index.search([query], 10)
            seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


def ivf_lists(n: int) -> int:
    return max(1, 2 ** round(math.log2(4 * math.sqrt(n))))


def factories(n: int, dimension: int, given: list[str] | None) -> list[str]:
    return given or ["HNSW32", "SQ8", f"IVF{ivf_lists(n)},Flat", f"IVF{ivf_lists(n)},PQ{dimension // 8}"]


def sweep(factory: str) -> list[str]:
    if factory.startswith("HNSW"):
        return ["efSearch=16", "efSearch=64", "efSearch=256"]
    if "IVF" in factory:
        return ["nprobe=1", "nprobe=8", "nprobe=32", "nprobe=128"]
    return [""]


def speed(size: int, vocabulary: Counter, work: Path, args) -> dict:
    corpus = work / f"generated_{size}.jsonl"
    queries = generate_corpus(corpus, size, vocabulary)
    cache = work / f"cache_{size}"
    cache.mkdir()
    common = {"corpus": str(corpus), "chunk_size": args.chunk_size, "dense_sample": args.dense_sample,
              "cache": str(cache), "threads": args.threads}
    results = {"corpus_mb": round(corpus.stat().st_size / 2**20, 1)}
    for name, spec in [("bm25", {"kind": "bm25"}), ("dense Flat", {"kind": "dense", "faiss": "Flat"})]:
        output = work / f"index_{size}"
        entry = run_child({**common, **spec, "output": str(output)})
        if spec["kind"] == "dense":
            rate = entry["real_passages"] / entry["real_seconds"]
            results["embed_passages_per_s"] = round(rate, 1)
            entry["build_s"] = round(entry["build_s_measured"] - entry["synthetic_seconds"]
                                     + (size - entry["real_passages"]) / rate, 1)
        else:
            entry["build_s"] = entry["build_s_measured"]
        entry["query"] = latency(output, queries, args.single)
        results[name] = entry
        print(f"  {size} {name}: {entry}", flush=True)
        shutil.rmtree(output)
    dimension = int((cache / "dimension").read_text())
    rate = results["embed_passages_per_s"]
    for factory in factories(size, dimension, args.factories):
        output = work / f"index_{size}"
        entry = run_child({**common, "kind": "dense", "faiss": factory, "train_sample": args.train_sample,
                           "output": str(output)})
        entry["build_s"] = round(entry["build_s_measured"] - entry["synthetic_seconds"] + size / rate, 1)
        entry["query"] = {params or "default": latency(output, queries, args.single, SearchSettings(faiss_params=params))
                          for params in sweep(factory)[:2]}
        results[f"dense {factory}"] = entry
        print(f"  {size} dense {factory}: {entry}", flush=True)
        shutil.rmtree(output)
    corpus.unlink()
    shutil.rmtree(cache)
    return results


def real_pool(limit: int) -> tuple[list[str], list[str]]:
    """Distinct paragraphs (``title\\ntext``) and questions of ../shared/data, in file order."""
    paragraphs: dict[str, None] = {}
    questions: dict[str, None] = {}
    for path in sorted(SHARED.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            question = row.get("question") or row.get("question_text")
            if isinstance(question, str):
                questions.setdefault(question, None)
            for title, sentences in row.get("context") or []:
                paragraphs.setdefault(f"{title}\n{' '.join(sentences)}", None)
            for item in (row.get("contexts") or []) + (row.get("paragraphs") or []) + (row.get("ctxs") or []):
                text = item.get("paragraph_text") or item.get("text")
                if text:
                    paragraphs.setdefault(f"{item.get('title', '')}\n{text}", None)
    return list(paragraphs)[:limit], list(questions)


def recall(args) -> dict:
    passages, questions = real_pool(args.recall_pool)
    encoder = load_encoder(DenseSettings())
    started = time.perf_counter()
    vectors = encoder.encode(passages, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    embed_s = time.perf_counter() - started
    queries = encoder.encode(questions, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    exact = new_faiss_index(vectors.shape[1], "Flat")
    exact.add(vectors)
    _, truth = exact.search(queries, 10)  # [Q, 10]
    out = {"passages": len(passages), "questions": len(questions), "embed_passages_per_s": round(len(passages) / embed_s, 1)}
    for factory in factories(len(passages), vectors.shape[1], args.factories):
        index = new_faiss_index(vectors.shape[1], factory)
        if not index.is_trained:
            index.train(vectors[np.sort(np.random.default_rng(0).choice(len(vectors), min(len(vectors), args.train_sample),
                                                                        replace=False))])
        index.add(vectors)
        for params in sweep(factory):
            set_search_parameters(index, params)
            started = time.perf_counter()
            _, found = index.search(queries, 10)
            search_ms = (time.perf_counter() - started) / len(queries) * 1000
            hits = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
            out[f"{factory} {params}".strip()] = {"recall@10": round(float(hits), 4), "search_ms_per_query": round(search_ms, 3)}
    print(f"  recall: {out}", flush=True)
    return out


def extrapolate(speed_results: dict, recall_results: dict, args) -> dict:
    """Each 21M figure with its arithmetic: linear in N from the largest size (and the slope between two sizes)."""
    sizes = sorted(int(s) for s in speed_results)
    big = speed_results[str(sizes[-1])]
    lines = {}
    for name, entry in big.items():
        if not isinstance(entry, dict):
            continue
        n = sizes[-1]
        if len(sizes) > 1 and name in speed_results[str(sizes[0])]:
            small = speed_results[str(sizes[0])][name]
            slope = (entry["peak_rss_mb"] - small["peak_rss_mb"]) / (n - sizes[0])
            memory = entry["peak_rss_mb"] + slope * (WIKI18 - n)
            memory_text = (f"{entry['peak_rss_mb']} MB + ({entry['peak_rss_mb']} - {small['peak_rss_mb']}) MB / "
                           f"({n} - {sizes[0]}) x ({WIKI18} - {n}) = {memory / 1024:.1f} GB")
        else:
            memory_text = f"{entry['peak_rss_mb']} MB at {n}: give two --sizes for the slope"
        disk = entry["disk_mb"] / n * WIKI18
        lines[name] = {"peak_memory": memory_text, "disk": f"{entry['disk_mb']} MB / {n} x {WIKI18} = {disk / 1024:.1f} GB"}
        if name.startswith("dense"):
            rate = big["embed_passages_per_s"]
            rest = entry["build_s"] - n / rate  # what is not embedding: reading, training, adding, writing
            lines[name]["build_cpu"] = (f"{WIKI18} / {rate} passages/s / 3600 + {rest:.1f} s x {WIKI18} / {n} / 3600 = "
                                        f"{(WIKI18 / rate + rest * WIKI18 / n) / 3600:.1f} h")
            if args.gpu_rate:
                lines[name]["build_gpu"] = (f"{WIKI18} / {args.gpu_rate} passages/s / 3600 + {rest:.1f} s x {WIKI18} / {n} "
                                            f"/ 3600 = {(WIKI18 / args.gpu_rate + rest * WIKI18 / n) / 3600:.1f} h")
            else:
                lines[name]["build_gpu"] = "not measured here (no GPU): run with --gpu_rate, the passages/s of --device cuda"
        else:
            lines[name]["build_cpu"] = (f"{entry['build_s']} s x {WIKI18} / {n} / 3600 = "
                                        f"{entry['build_s'] * WIKI18 / n / 3600:.1f} h")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dense_sample", type=int, default=2048, help="passages embedded for real per size")
    parser.add_argument("--chunk_size", type=int, default=10_000)
    parser.add_argument("--train_sample", type=int, default=200_000)
    parser.add_argument("--factories", nargs="+", default=None, help="faiss factory strings (default: scaled to N)")
    parser.add_argument("--recall_pool", type=int, default=14_000, help="real paragraphs embedded for the recall table")
    parser.add_argument("--single", type=int, default=100, help="one-query searches timed per index")
    parser.add_argument("--gpu_rate", type=float, default=None, help="passages/s of --device cuda, measured elsewhere")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = {"machine": machine(), "args": vars(args)}
    print(report["machine"], flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    try:
        passages, _ = read_2wiki(Path(DATA))
        vocabulary = word_counts(passages)
        report["speed"] = {str(size): speed(size, vocabulary, work, args) for size in args.sizes}
        report["recall_vs_flat"] = recall(args)
        report["wiki18_extrapolation"] = extrapolate(report["speed"], report["recall_vs_flat"], args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
