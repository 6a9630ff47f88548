"""Load on ``openrag serve`` over loopback: concurrent clients against the same requests sent one by one.

    python benchmarks/bench_serve.py [--model_name smollm2 | --tiny] [--requests 200] [--concurrency 16]
                                     [--max_new_tokens 16] [--mode always_retrieve] [--unbatched]
                                     [--threads 1] [--output FILE.json]

The server runs in its own process (``python -m openrag serve`` on 127.0.0.1, a free port); this process
is only the clients (asyncio + httpx, one connection per client). The requests are the questions of
../shared/data/2wikimultihopqa/2wiki_dev200.jsonl that carry context paragraphs (164, cycled), each with
its first ``--ndocs`` paragraphs as passages, all with the same options. Phases, each after two warm-up requests:

1. ``sequential``: one client, each request sent when the previous answer came back;
2. ``concurrent``: ``--concurrency`` clients sharing the same list of requests (closed loop);
3. with ``--unbatched``: the concurrent phase against a server started with ``--max_batch 1``, i.e. one
   question per engine call, as a server that answers behind a lock would.

Per phase: errors (any non-200 answer or failed connection), latency p50/p95/max as the client saw it,
throughput (answers per second of wall time), and from /health the engine calls and the mean batch size.
``--tiny`` serves a tiny random Llama (2 layers, hidden 32) with the bundled tokenizer and the reflection
tokens: it measures the server and the engine's per-step overhead rather than the model's arithmetic.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "2wikimultihopqa" / "2wiki_dev200.jsonl"
HOST = "127.0.0.1"  # loopback only: the load never leaves this machine


def read_requests(path: Path, n: int, ndocs: int, options: dict) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if row.get("context")]  # 164 of the 200 carry their paragraphs
    requests = []
    for i in range(n):
        row = rows[i % len(rows)]
        passages = [{"title": title, "text": " ".join(sentences)} for title, sentences in row["context"][:ndocs]]
        requests.append({"question": row["question"], "passages": passages, **options})
    return requests


def save_tiny_model(folder: Path) -> Path:
    """A tiny random Llama sized for the bundled tokenizer, with the reflection tokens, saved as a checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from openrag.model.bundled import smollm2_checkpoint
    from openrag.model.reflection import add_reflection_tokens

    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    add_reflection_tokens(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``openrag serve`` in a child process, up once /health answers."""

    def __init__(self, model: str, max_batch: int, device: str, log: Path, extra: list[str]):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "openrag", "serve", "--model_name", model, "--host", HOST,
                   "--port", str(self.port), "--device", device, "--max_batch", str(max_batch),
                   "--queue_size", "256", "--log_level", "warning", *extra]
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "OPENRAG_API_KEY": ""})

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server did not answer /health within {timeout} s")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def run_phase(url: str, requests: list[dict], concurrency: int) -> dict:
    """Send every request, ``concurrency`` at a time (closed loop); latencies as the client measured them."""
    pending = list(enumerate(requests))
    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[int, str] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        while pending:
            i, body = pending.pop(0)
            start = time.perf_counter()
            try:
                response = await http.post("/v1/answer", json=body)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                else:
                    answers[i] = response.json()["text"]
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(requests), "concurrency": concurrency, "errors": len(errors), "error_samples": errors[:5],
        "wall_seconds": wall, "throughput_rps": len(requests) / wall,
        "latency_p50_s": percentile(ordered, 50), "latency_p95_s": percentile(ordered, 95), "latency_max_s": ordered[-1],
        "latency_mean_s": statistics.fmean(ordered), "answers": answers,
    }


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(server: Server, name: str, requests: list[dict], concurrency: int) -> dict:
    asyncio.run(run_phase(server.url, requests[:2], 1))  # warm-up
    before = server.health()
    result = asyncio.run(run_phase(server.url, requests, concurrency))
    after = server.health()
    calls = after["pipeline_calls"] - before["pipeline_calls"]
    answered = after["answered"] - before["answered"]
    result.update(phase=name, pipeline_calls=calls, mean_batch=answered / calls if calls else 0.0,
                  largest_batch=after["largest_batch"])
    print(f"{name:>11}: {result['requests']} requests, {concurrency} clients, {result['errors']} errors, "
          f"{result['wall_seconds']:.1f} s, {result['throughput_rps']:.2f} req/s, p50 {result['latency_p50_s']:.2f} s, "
          f"p95 {result['latency_p95_s']:.2f} s, {calls} engine calls (mean batch {result['mean_batch']:.1f})", flush=True)
    return result


def machine() -> dict:
    model_name = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model_name, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="smollm2", help="what the server loads (default: the bundled base)")
    parser.add_argument("--tiny", action="store_true", help="serve a tiny random Llama instead (see the module doc)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max_batch", type=int, default=16, help="the batched server's --max_batch")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--ndocs", type=int, default=3, help="passages per request (the first context paragraphs)")
    parser.add_argument("--mode", default="adaptive_retrieval", choices=("no_retrieval", "always_retrieve", "adaptive_retrieval"))
    parser.add_argument("--unbatched", action="store_true", help="also run the concurrent phase with --max_batch 1")
    parser.add_argument("--skip_sequential", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (--threads of openrag serve)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    options = {"mode": args.mode, "ndocs": args.ndocs, "max_new_tokens": args.max_new_tokens}
    requests = read_requests(args.data, args.requests, args.ndocs, options)
    report = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "settings": {**vars(args), "data": str(args.data), "output": str(args.output)}, "phases": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_tiny_model(Path(tmp) / "tiny")) if args.tiny else args.model_name
        report["settings"]["served_model"] = "tiny random Llama (2 layers, hidden 32, SmolLM2 tokenizer)" if args.tiny else model
        plans = [("batched", args.max_batch)] + ([("unbatched", 1)] if args.unbatched else [])
        for label, max_batch in plans:
            extra = ["--threads", str(args.threads)] if args.threads else []
            server = Server(model, max_batch, args.device, Path(tmp) / f"{label}.log", extra)
            try:
                server.wait_ready()
                if label == "batched" and not args.skip_sequential:
                    report["phases"].append(measure(server, "sequential", requests, 1))
                report["phases"].append(measure(server, "concurrent" if label == "batched" else "unbatched",
                                                requests, args.concurrency))
            finally:
                server.stop()
    phases = {p["phase"]: p for p in report["phases"]}
    if "sequential" in phases and "concurrent" in phases:
        same = sum(phases["sequential"]["answers"].get(i) == a for i, a in phases["concurrent"]["answers"].items())
        report["answers_equal_to_sequential"] = f"{same}/{len(phases['concurrent']['answers'])}"
        print(f"answers equal to the sequential phase's: {report['answers_equal_to_sequential']}")
    for phase in report["phases"]:
        phase.pop("answers")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    total_errors = sum(p["errors"] for p in report["phases"])
    if total_errors:
        sys.exit(f"{total_errors} requests failed: {[p['error_samples'] for p in report['phases']]}")


if __name__ == "__main__":
    main()
