"""Retrieval speed and quality (issue: retrieval over the user's own documents).

    python benchmarks/bench_retrieval.py [--sizes 10000 100000] [--dense_sample 512] [--output FILE.json]

1. Speed at each size of a generated corpus (passages of 100 words drawn from the unigram distribution of the
   2WikiMultihopQA paragraphs; queries are 6-word windows of random passages): build time, open time, and query
   latency p50/p95 for one query at a time and for batches of 100, for bm25, dense and hybrid indexes.
   Dense embedding on a small CPU is far too slow for 100k passages, so the dense and hybrid builds embed only
   the first ``--dense_sample`` passages with the real encoder; the rest get random unit vectors (search cost
   does not depend on the values), and the build time reported is the measured build with the encoding time of
   the missing passages added at the measured encoder throughput. Query latencies are real: real query encoding,
   exact faiss search over all N vectors, real fusion.
2. Quality: recall@k of the gold (supporting-fact) titles among the top k passages on the pooled paragraphs of
   ../shared/data/2wikimultihopqa (every question's context paragraphs, deduplicated), queried with the questions
   that have a context. Hybrid there fuses the bm25 and dense indexes built for the table (the same fusion code a
   hybrid index runs) instead of embedding the pool twice. With ``--draft_answers`` (the JSON lines of an
   ``openrag eval --mode no_retrieval`` run: ``question`` and ``prediction``), recall is also measured with the
   multi-hop query "question + no-retrieval answer". "question + gold answer" is always measured too, as the
   upper bound of that query (a perfect no-retrieval answer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from openrag.retrieval import Index, IndexSettings, build_index, open_index, retrieval_recall_at_k
from openrag.retrieval import dense as dense_module
from openrag.retrieval.dense import DenseWriter
from openrag.retrieval.hybrid import HybridRetriever

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "2wikimultihopqa" / "2wiki_dev200.jsonl"
KINDS = ("bm25", "dense", "hybrid")


def read_2wiki(path: Path) -> tuple[list[dict], list[tuple[str, list[str], str]]]:
    """Pooled paragraphs {id, title, text} and (question, gold titles, answer) of the rows that have a context."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pool: dict[tuple[str, str], None] = {}
    questions = []
    for row in rows:
        if not row.get("context"):
            continue
        for title, sentences in row["context"]:
            pool.setdefault((title, " ".join(sentences)), None)
        questions.append((row["question"], sorted({title for title, _ in row["supporting_facts"]}), str(row["answer"])))
    passages = [{"id": f"p{i}", "title": title, "text": text} for i, (title, text) in enumerate(pool)]
    return passages, questions


def word_counts(passages: list[dict]) -> Counter:
    """Lower-cased word counts of the passages' titles and texts: the unigram distribution generated corpora use."""
    return Counter(w.lower() for p in passages for w in f"{p['title']} {p['text']}".split())


def generate_corpus(path: Path, size: int, vocabulary: Counter, seed: int = 0, words: int = 100) -> list[str]:
    """Write ``size`` passages of ``words`` words drawn from ``vocabulary``'s unigram distribution; return queries."""
    rng = np.random.default_rng(seed)
    terms = np.array(list(vocabulary))
    probabilities = np.array(list(vocabulary.values()), dtype=np.float64)
    probabilities /= probabilities.sum()
    queries = []
    query_rows = set(rng.choice(size, size=600, replace=False).tolist())
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, size, 10_000):
            block = terms[rng.choice(len(terms), size=(min(10_000, size - start), words + 2), p=probabilities)]
            for i, tokens in enumerate(block):
                row = start + i
                text = " ".join(tokens[2:])
                f.write(json.dumps({"id": f"g{row}", "title": f"{tokens[0]} {tokens[1]}".title(), "text": text}) + "\n")
                if row in query_rows:
                    at = int(rng.integers(2, words - 6))
                    queries.append(" ".join(tokens[at:at + 6]))
    rng.shuffle(queries)
    return queries


@contextmanager
def sampled_encoding(sample: int, timings: dict):
    """While building, encode the first ``sample`` passages for real (timed) and give the rest random unit vectors
    (the build embeds chunk by chunk through DenseWriter.add; queries are always encoded for real)."""
    real_add = DenseWriter.add
    timings.update(real_seconds=0.0, real_passages=0, synthetic_seconds=0.0)

    def add(self, chunks, k, texts):
        started = time.perf_counter()
        real = max(0, min(len(texts), sample - timings["real_passages"]))
        head = dense_module.encode(self.encoder, texts[:real], self.settings, self.batch_size) if real else None
        timings["real_seconds"] += time.perf_counter() - started
        timings["real_passages"] += real
        started = time.perf_counter()
        dimension = dense_module.encoder_dimension(self.encoder)
        rest = np.random.default_rng(k).standard_normal((len(texts) - real, dimension), dtype=np.float32)
        rest /= np.linalg.norm(rest, axis=1, keepdims=True)
        vectors = rest if head is None else np.concatenate([head, rest])
        np.save(chunks / f"dense-{k:06d}.npy", vectors, allow_pickle=False)
        timings["synthetic_seconds"] += time.perf_counter() - started

    DenseWriter.add = add
    try:
        yield
    finally:
        DenseWriter.add = real_add


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def latencies(index: Index, queries: list[str], single: int, batches: int, top_k: int = 5) -> dict:
    started = time.perf_counter()
    index.search(queries[:1], top_k)  # warm-up: loads the encoder of a dense index
    first = time.perf_counter() - started
    one = []
    for query in queries[1:single + 1]:
        started = time.perf_counter()
        index.search([query], top_k)
        one.append(time.perf_counter() - started)
    batch = []
    for b in range(batches):
        chunk = queries[b * 100:(b + 1) * 100]
        started = time.perf_counter()
        index.search(chunk, top_k)
        batch.append(time.perf_counter() - started)
    return {"first_query_s": round(first, 3), "one": percentiles(one), "batch100": percentiles(batch),
            "single_queries": len(one), "batches": len(batch)}


def speed(size: int, vocabulary: Counter, work: Path, args) -> dict:
    corpus = work / f"generated_{size}.jsonl"
    queries = generate_corpus(corpus, size, vocabulary)
    results = {}
    for kind in KINDS:
        output = work / f"{kind}_{size}"
        timings: dict = {}
        started = time.perf_counter()
        if kind == "bm25":
            build_index(corpus, output, IndexSettings(kind=kind), show_progress=False)
        else:
            with sampled_encoding(args.dense_sample, timings):
                build_index(corpus, output, IndexSettings(kind=kind), batch_size=args.batch_size, show_progress=False)
        build = time.perf_counter() - started
        entry = {"build_s_measured": round(build, 2)}
        if timings:
            rate = timings["real_passages"] / timings["real_seconds"]
            extrapolated = build - timings["synthetic_seconds"] + (size - timings["real_passages"]) / rate
            entry.update(embed_passages_per_s=round(rate, 1), build_s=round(extrapolated, 1), build_is_extrapolated=True)
        else:
            entry["build_s"] = round(build, 2)
        started = time.perf_counter()
        with open_index(output) as index:
            entry["open_s"] = round(time.perf_counter() - started, 3)
            entry.update(latencies(index, queries, args.single, args.batches))
        results[kind] = entry
        print(f"  {size} {kind}: {entry}", flush=True)
        shutil.rmtree(output)
    corpus.unlink()
    return results


def recall(work: Path, args) -> dict:
    passages, questions = read_2wiki(Path(args.data))
    corpus = work / "2wiki_pool.jsonl"
    corpus.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
    started = time.perf_counter()
    bm25 = build_index(corpus, work / "2wiki_bm25", IndexSettings(kind="bm25"), show_progress=False)
    dense = build_index(corpus, work / "2wiki_dense", IndexSettings(kind="dense"), batch_size=args.batch_size,
                        show_progress=False)
    built = time.perf_counter() - started
    hybrid_settings = IndexSettings(kind="hybrid")
    hybrid = Index(bm25.folder, {**bm25.manifest, "kind": "hybrid"}, bm25.passages,
                   HybridRetriever([bm25.retriever, dense.retriever], hybrid_settings.rrf_k, hybrid_settings.fusion_depth))
    out = {"passages": len(passages), "questions": len(questions), "build_s_bm25_and_dense": round(built, 1)}
    variants = {"": [q for q, _, _ in questions], " (question + gold answer)": [f"{q} {a}" for q, _, a in questions]}
    if args.draft_answers:
        drafts = read_drafts(Path(args.draft_answers))
        missing = sum(q not in drafts for q, _, _ in questions)
        if missing:
            raise ValueError(f"{args.draft_answers} has no answer for {missing} of the {len(questions)} questions")
        variants[" (question + no-retrieval answer)"] = [f"{q} {drafts[q]}" for q, _, _ in questions]
    for suffix, texts in variants.items():
        for name, index in (("bm25", bm25), ("dense", dense), ("hybrid", hybrid)):
            results = index.search(texts, max(args.recall_k))
            for k in args.recall_k:
                scores = [retrieval_recall_at_k([p.title for p in hits[:k]], gold)
                          for hits, (_, gold, _) in zip(results, questions)]
                out[f"{name}_recall@{k}{suffix}"] = round(float(np.mean(scores)), 4)
    bm25.close()  # the hybrid index reads bm25's passage store
    dense.close()
    print(f"  2wiki: {out}", flush=True)
    return out


def read_drafts(path: Path) -> dict[str, str]:
    """question -> the no-retrieval answer, from an eval run's JSON lines (its sweep record, else its prediction)."""
    drafts = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            drafts[record["question"]] = (record.get("no_retrieval") or record)["prediction"]
    return drafts


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), platform.processor())
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def write_report(report: dict, output: str | None) -> None:
    """Record the load average at the end, print the report as JSON and, with ``output``, write it there too."""
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dense_sample", type=int, default=256, help="passages embedded for real per dense build")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--single", type=int, default=100, help="one-query searches timed")
    parser.add_argument("--batches", type=int, default=5, help="batches of 100 queries timed")
    parser.add_argument("--recall_k", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--draft_answers", default=None, help="eval JSON lines with no-retrieval answers to the questions")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = {"machine": machine(), "args": vars(args)}
    print(report["machine"], flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_retrieval-"))
    try:
        passages, _ = read_2wiki(Path(args.data))
        vocabulary = word_counts(passages)
        report["recall_2wiki"] = recall(work, args)
        report["speed"] = {str(size): speed(size, vocabulary, work, args) for size in args.sizes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
