"""Load and abuse on ``openrag serve`` over loopback: well-formed clients beside hostile ones, for a fixed time.

    python benchmarks/bench_serve_abuse.py [--model_name smollm2 | --tiny] [--seconds 60] [--well_formed 4]
                                           [--slow 200] [--long 3] [--threads 1] [--output FILE.json]

The server runs in its own process with its default limits (``python -m openrag serve`` on 127.0.0.1, a free
port); this process is the clients, all on asyncio, for ``--seconds``:

- ``--well_formed`` clients, each sending the next 2WikiMultihopQA request (3 passages, 16 new tokens, as
  bench_serve.py does) when the previous answer came back;
- one oversize client sending the issue's request (32 passages of 20,000 characters, max_new_tokens 1,024:
  641 KB, under every byte and field limit) again and again; the token budget should refuse it (413);
- ``--slow`` slow clients: connections that send a request's headers a few bytes a second and never finish
  them, reopened when the server closes them (header timeout, connection limit);
- one disconnecting client sending a heavy in-budget request (6 passages, 512 new tokens) and hanging up
  after half a second, again and again; the server should stop that work;
- ``--long`` clients (issue 31), each sending one of three requests of long passages that are within the
  default limits, again and again: a 20 KB passage of 5,000 x "𝔘" (some 15k tokens), a 20,000-character English
  passage, and 14 such passages; the well-formed requests should not wait behind them.

Reported: well-formed requests served, their errors and p50/p95/max latency (beside the long requests' own);
what each hostile kind got;
/health probed twice a second (its worst latency); the server's peak memory (RSS, sampled four times a
second) and its memory once the load stopped; the server's own counters. Nothing leaves 127.0.0.1, and the
number of connections and the time are bounded by the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import DATA, HOST, Server, machine, percentile, read_requests, save_tiny_model  # noqa: E402


def words(rng: random.Random, chars: int) -> str:
    out = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(["river", "castle", "quantum", "orange", "history", "glass"]) + str(rng.randint(0, 999)))
    return " ".join(out)[:chars]


class Load:
    def __init__(self, url: str, port: int, stop_at: float):
        self.url, self.port, self.stop_at = url, port, stop_at
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.hostile: dict[str, Counter] = {"oversize": Counter(), "slow": Counter(), "disconnecting": Counter(),
                                            "long": Counter()}
        self.long_latencies: list[float] = []
        self.health_latencies: list[float] = []
        self.peak_rss = 0

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    async def well_formed(self, requests: list[dict], offset: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=300) as http:
            i = offset
            while self.running():
                start = time.perf_counter()
                try:
                    r = await http.post("/v1/answer", json=requests[i % len(requests)])
                    if r.status_code == 200:
                        self.latencies.append(time.perf_counter() - start)
                    else:
                        self.errors[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as err:
                    self.errors[type(err).__name__] += 1
                i += 1

    async def oversize(self, body: dict) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            while self.running():
                try:
                    r = await http.post("/v1/answer", json=body)
                    self.hostile["oversize"][f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as err:
                    self.hostile["oversize"][type(err).__name__] += 1
                await asyncio.sleep(0.2)

    async def long(self, body: dict) -> None:
        """A closed-loop client of in-limit requests of long passages; the one in flight when the load stops is
        withdrawn (its connection closed)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=None) as http:
            while self.running():
                start = time.perf_counter()
                try:
                    r = await asyncio.wait_for(http.post("/v1/answer", json=body), self.stop_at - time.monotonic())
                    self.hostile["long"][f"HTTP {r.status_code}"] += 1
                    if r.status_code == 200:
                        self.long_latencies.append(time.perf_counter() - start)
                except asyncio.TimeoutError:
                    self.hostile["long"]["unanswered when the load stopped"] += 1
                except httpx.HTTPError as err:
                    self.hostile["long"][type(err).__name__] += 1

    async def slow(self) -> None:
        """One connection at a time that trickles headers forever; reopened when the server closes it."""
        while self.running():
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            except OSError as err:
                self.hostile["slow"][f"connect failed: {type(err).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            self.hostile["slow"]["opened"] += 1
            try:
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                while self.running():
                    writer.write(b"X-Slow-" + str(random.randint(0, 9)).encode() + b": 1\r\n")
                    await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            self.hostile["slow"]["closed by the server"] += 1
                            break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                self.hostile["slow"]["closed by the server"] += 1
            finally:
                writer.close()

    async def disconnecting(self, body: dict) -> None:
        payload = json.dumps(body).encode()
        head = (b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n")
        while self.running():
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
                writer.write(head + payload)
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.close()
                self.hostile["disconnecting"]["hung up after 0.5 s"] += 1
            except OSError as err:
                self.hostile["disconnecting"][type(err).__name__] += 1
            await asyncio.sleep(1.0)

    async def watch(self, pid: int) -> None:
        process = psutil.Process(pid)
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            n = 0
            while self.running():
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
                if n % 2 == 0:
                    start = time.perf_counter()
                    try:
                        await http.get("/health")
                        self.health_latencies.append(time.perf_counter() - start)
                    except httpx.HTTPError:
                        self.health_latencies.append(float("inf"))
                n += 1
                await asyncio.sleep(0.25)


async def run_load(server: Server, args, requests: list[dict], oversize: dict, heavy: dict, long: list[dict]) -> Load:
    load = Load(server.url, server.port, time.monotonic() + args.seconds)
    tasks = [load.well_formed(requests, k * 7) for k in range(args.well_formed)]
    tasks += [load.oversize(oversize), load.disconnecting(heavy), load.watch(server.process.pid)]
    tasks += [load.long(long[k % len(long)]) for k in range(args.long)]
    tasks += [load.slow() for _ in range(args.slow)]
    await asyncio.gather(*tasks)
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="smollm2", help="what the server loads (default: the bundled base)")
    parser.add_argument("--tiny", action="store_true", help="serve a tiny random Llama instead (as bench_serve.py)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load lasts")
    parser.add_argument("--well_formed", type=int, default=4, help="well-formed clients (closed loop)")
    parser.add_argument("--slow", type=int, default=200, help="connections that never finish their headers")
    parser.add_argument("--long", type=int, default=3, help="clients sending in-limit requests of long passages")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    requests = read_requests(args.data, 200, 3, {"mode": "adaptive_retrieval", "ndocs": 3, "max_new_tokens": 16})
    rng = random.Random(0)
    oversize = {"question": "Summarise everything.", "mode": "always_retrieve", "ndocs": 32, "max_new_tokens": 1024,
                "passages": [{"title": f"P{i}", "text": words(rng, 20_000)} for i in range(32)]}
    heavy = {"question": "Which river runs past the castle?", "mode": "always_retrieve", "ndocs": 6, "max_new_tokens": 512,
             "passages": [{"title": f"P{i}", "text": words(rng, 4_000)} for i in range(6)]}
    long = [{"question": "What does the passage say?", "mode": "always_retrieve", "max_new_tokens": 16, "ndocs": len(texts),
             "passages": [{"title": f"P{i}", "text": text} for i, text in enumerate(texts)]}
            for texts in (["\U0001d518" * 5_000], [words(rng, 20_000)], [words(rng, 20_000) for _ in range(14)])]
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_tiny_model(Path(tmp) / "tiny")) if args.tiny else args.model_name
        extra = ["--threads", str(args.threads)] if args.threads else []
        server = Server(model, 8, args.device, Path(tmp) / "server.log", extra)
        try:
            server.wait_ready()
            httpx.post(server.url + "/v1/answer", json=requests[0], timeout=300)  # warm-up
            start_rss = psutil.Process(server.process.pid).memory_info().rss
            load = asyncio.run(run_load(server, args, requests, oversize, heavy, long))
            time.sleep(2.0)
            end_rss = psutil.Process(server.process.pid).memory_info().rss
            health = server.health()
            log_lines = len((Path(tmp) / "server.log").read_text(errors="replace").splitlines())
        finally:
            server.stop()

    ordered, long_ordered = sorted(load.latencies), sorted(load.long_latencies)
    health_ordered = sorted(load.health_latencies)
    report = {
        "machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {**vars(args), "data": str(args.data), "output": str(args.output),
                     "served_model": "tiny random Llama (2 layers, hidden 32, SmolLM2 tokenizer)" if args.tiny else model},
        "well_formed": {"served": len(ordered), "errors": sum(load.errors.values()), "error_kinds": dict(load.errors),
                        "latency_p50_s": percentile(ordered, 50) if ordered else None,
                        "latency_p95_s": percentile(ordered, 95) if ordered else None,
                        "latency_max_s": ordered[-1] if ordered else None},
        "hostile": {kind: dict(counts) for kind, counts in load.hostile.items()},
        "long": {"clients": args.long, "answered": len(long_ordered),
                 "latency_p50_s": percentile(long_ordered, 50) if long_ordered else None,
                 "latency_p95_s": percentile(long_ordered, 95) if long_ordered else None},
        "health_probes": {"count": len(health_ordered), "max_latency_s": health_ordered[-1] if health_ordered else None},
        "server_memory_mb": {"before": start_rss / 2**20, "peak": load.peak_rss / 2**20, "after": end_rss / 2**20},
        "server_counters": {k: health[k] for k in ("answered", "failed", "rejected", "over_budget", "timed_out",
                                                   "disconnected", "interrupted", "pipeline_calls")},
        "server_log_lines": log_lines,
    }
    w, m = report["well_formed"], report["server_memory_mb"]
    print(f"{args.seconds:g} s: {w['served']} well-formed requests served, {w['errors']} errors {w['error_kinds'] or ''}, "
          f"p50 {w['latency_p50_s'] or 0:.2f} s, p95 {w['latency_p95_s'] or 0:.2f} s, max {w['latency_max_s'] or 0:.2f} s")
    for kind, counts in report["hostile"].items():
        print(f"  {kind}: {counts}")
    lg = report["long"]
    print(f"  beside {lg['clients']} long-passage clients ({lg['answered']} answered, p95 {lg['latency_p95_s'] or 0:.2f} s): "
          f"well-formed p95 {w['latency_p95_s'] or 0:.2f} s")
    print(f"  /health: {report['health_probes']['count']} probes, worst {report['health_probes']['max_latency_s']:.2f} s")
    print(f"  server memory: {m['before']:.0f} MB before, peak {m['peak']:.0f} MB, {m['after']:.0f} MB after; "
          f"{log_lines} log lines; counters {report['server_counters']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
