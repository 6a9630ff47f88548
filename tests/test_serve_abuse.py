"""Attacks on ``openrag serve`` over real sockets on 127.0.0.1 (issue 16): each one reproduced, each bounded.

One server process (a tiny random Llama on the bundled tokenizer, 8k positions) with small limits, run with
at most 256 open files, as a server on a crowded machine would be. The attacks: a request under every byte
and field limit that would hold the engine for minutes, a request that outlives its deadline, a client
that leaves while its answer is computed, hundreds of connections that never finish their headers, a
page under a foreign name (DNS rebinding) asking a keyless local server, and (issue 31, on a second server whose
limits let them in) requests of long passages that held up everyone else. Pure pieces are tested in-process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import resource
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from openrag.serve import ServeSettings
from openrag.serve.app import host_name
from openrag.serve.limits import release_memory, request_tokens, utf8_bytes

from .conftest import running_server, save_tiny_served_model

DEADLINE_S = 3.0
HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 64
BUDGET = 40_000
OPEN_FILES = 256


def _text(rng: random.Random, chars: int) -> str:
    """Words that tokenise to about one token per three characters (no repetition the tokenizer could merge)."""
    words = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(["river", "castle", "quantum", "orange", "history", "glass"]) + str(rng.randint(0, 999)))
    return " ".join(words)[:chars]


RNG = random.Random(0)
# 641 KB, every field within its limit (32 passages of 20,000 characters, max_new_tokens 1,024): the issue's request.
ATTACK = {"question": "Summarise everything.", "mode": "always_retrieve", "ndocs": 32, "max_new_tokens": 1024,
          "passages": [{"title": f"P{i}", "text": _text(RNG, 20_000)} for i in range(32)]}
# Within the budget (about 30,000 tokens) but some 15 s of engine work on this tiny model on two busy cores.
SLOW = {"question": "Which river runs past the castle?", "mode": "always_retrieve", "ndocs": 10, "max_new_tokens": 1024,
        "passages": [{"title": f"P{i}", "text": _text(RNG, 6_000)} for i in range(10)]}
SMALL = {"question": "Who wrote Dune?", "mode": "no_retrieval", "max_new_tokens": 4}
# Issue 31: in the limits of a server that lets long passages in (a large budget, passages not cut below the
# context window), 32 rows of some 6,700 tokens each: a minute or more of engine work each, three at once.
LONG = {"question": "What does the castle's history say?", "mode": "always_retrieve", "ndocs": 32, "max_new_tokens": 8,
        "passages": [{"title": f"P{i}", "text": _text(RNG, 20_000)} for i in range(32)]}
STARVED_S = 20.0  # a small request waiting longer than this waited for the long ones (alone it takes well under 1 s)


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory, smollm2_folder):
    return save_tiny_served_model(smollm2_folder, tmp_path_factory.mktemp("tiny_abused_model"), max_positions=8192)


def _crowded():
    """In the server's process: few file handles, and the lowest priority beside whatever else runs."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    os.nice(19)


class Server:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def until(self, condition, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if condition(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout} s: {health}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tiny_model_folder, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("abuse_log") / "server.log"
    limits = ["--threads", "1", "--max_new_tokens", "8", "--max_request_tokens", str(BUDGET), "--request_timeout_s",
              str(DEADLINE_S), "--header_timeout_s", str(HEADER_TIMEOUT_S), "--max_connections", str(MAX_CONNECTIONS)]
    with running_server(tiny_model_folder, log_path, *limits, preexec_fn=_crowded) as url:
        assert httpx.post(url + "/v1/answer", json=SMALL, timeout=60).status_code == 200  # warm
        yield Server(url, log_path)


@pytest.fixture(scope="module")
def roomy_server(tiny_model_folder, tmp_path_factory):
    """The server's defaults but a token budget that lets LONG in and no passage cut below the context window."""
    log_path = tmp_path_factory.mktemp("roomy_log") / "server.log"
    limits = ["--threads", "1", "--max_new_tokens", "8", "--max_request_tokens", "400000", "--max_passage_tokens", "8192",
              "--request_timeout_s", str(STARVED_S + 10)]
    with running_server(tiny_model_folder, log_path, *limits, preexec_fn=_crowded) as url:
        assert httpx.post(url + "/v1/answer", json=SMALL, timeout=60).status_code == 200  # warm
        yield Server(url, log_path)


def _send(server: Server, body: dict) -> socket.socket:
    """A request sent on a socket of its own, its answer not read: closing the socket withdraws it."""
    data = json.dumps(body).encode()
    client = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    client.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return client


def _small_answer_is_quick(server: Server) -> None:
    """A small request is answered (within the deadline): the engine is not busy with abandoned work."""
    r = httpx.post(server.url + "/v1/answer", json=SMALL, timeout=30)
    assert r.status_code == 200, r.text


# -- 7: DNS rebinding -----------------------------------------------------------------------------------


def test_a_foreign_host_header_is_refused(server):
    for path in ("/", "/health"):
        r = httpx.get(server.url + path, headers={"Host": "rebind.attacker.example"}, timeout=5)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == "Host" and "rebind.attacker.example" in error["message"] and "--allowed_hosts" in error["message"]
    r = httpx.post(server.url + "/v1/answer", json=SMALL, headers={"Host": "rebind.attacker.example:80"}, timeout=5)
    assert r.status_code == 400 and "Traceback" not in r.text
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(server.url + "/health", headers={"Host": host}, timeout=5).status_code == 200, host


# -- 1: bounded work ------------------------------------------------------------------------------------


def test_a_huge_in_limit_request_is_refused_by_the_token_budget(server):
    assert len(json.dumps(ATTACK)) > 600_000
    before = server.health()
    start = time.monotonic()
    r = httpx.post(server.url + "/v1/answer", json=ATTACK, timeout=30)
    assert r.status_code == 413, r.text[:500]
    assert time.monotonic() - start < 10
    error = r.json()["error"]
    assert "max_request_tokens" in error["message"] and f"{BUDGET:,}" in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == "passages"
    after = server.health()
    assert after["over_budget"] == before["over_budget"] + 1 and after["pipeline_calls"] == before["pipeline_calls"]


def test_a_request_past_its_deadline_is_cut_and_its_work_stopped(server):
    before = server.health()
    start = time.monotonic()
    r = httpx.post(server.url + "/v1/answer", json=SLOW, timeout=60)
    took = time.monotonic() - start
    assert r.status_code == 504, r.text[:500]
    assert r.json()["error"]["type"] == "timeout_error" and "request_timeout_s" in r.json()["error"]["message"]
    assert took < DEADLINE_S + 3
    after = server.until(lambda h: h["running"] == 0 and h["interrupted"] > before["interrupted"])
    assert after["timed_out"] == before["timed_out"] + 1 and after["answered"] == before["answered"]
    _small_answer_is_quick(server)


def test_a_client_that_disconnects_has_its_work_cancelled(server):
    before = server.health()
    body = json.dumps(SLOW).encode()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as client:
        client.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        server.until(lambda h: h["running"] == 1, timeout=DEADLINE_S)  # the engine works on it
    left = time.monotonic()
    after = server.until(lambda h: h["running"] == 0 and h["interrupted"] > before["interrupted"], timeout=DEADLINE_S)
    assert time.monotonic() - left < DEADLINE_S  # stopped by the disconnect, not by the deadline
    assert after["disconnected"] == before["disconnected"] + 1 and after["timed_out"] == before["timed_out"]
    assert after["answered"] == before["answered"]
    _small_answer_is_quick(server)


def test_a_small_request_is_answered_while_long_in_limit_requests_run(roomy_server):
    """Issue 31, item 1: three requests of long passages, each within the server's limits, held the engine for
    minutes and every other request waited behind them (504). Long rows are now computed in bounded slices between
    which a short request's forwards go first: it is answered while they still run."""
    before = roomy_server.health()
    clients = [_send(roomy_server, LONG) for _ in range(3)]
    try:
        roomy_server.until(lambda h: h["running"] >= 1, timeout=30)  # the engine works on the long ones
        start = time.monotonic()
        r = httpx.post(roomy_server.url + "/v1/answer", json=SMALL, timeout=60)
        took = time.monotonic() - start
        assert r.status_code == 200, r.text[:500]
        assert took < STARVED_S, f"the small request waited {took:.0f} s"
        health = roomy_server.health()
        assert health["answered"] == before["answered"] + 1 and health["running"] >= 1  # it overtook them
    finally:
        for client in clients:
            client.close()
    roomy_server.until(lambda h: h["running"] == 0 and h["queue"]["waiting"] == 0, timeout=30)  # withdrawn, their work stopped
    _small_answer_is_quick(roomy_server)


# -- 2: connections that never finish their headers ------------------------------------------------------


def test_hundreds_of_unfinished_connections_leave_health_answering(server):
    port = int(server.url.rsplit(":", 1)[1])
    lines_before = len(server.log.read_text(errors="replace").splitlines())
    flood = []
    try:
        for _ in range(300):  # more than the server's 256 file handles
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            flood.append(s)
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            except OSError:  # already closed to make room
                pass
        start = time.monotonic()
        r = httpx.get(server.url + "/health", timeout=10)
        assert r.status_code == 200 and time.monotonic() - start < 5
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
        open_ones = list(flood)
        while open_ones and time.monotonic() < deadline:  # the server closes every one of them
            time.sleep(0.2)
            open_ones = [s for s in open_ones if not _closed_by_peer(s)]
        assert not open_ones, f"{len(open_ones)} unfinished connections still open after the header timeout"
    finally:
        for s in flood:
            s.close()
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    log = server.log.read_text(errors="replace").splitlines()[lines_before:]
    assert len(log) < 60, "\n".join(log[:80])  # a flood is logged once, not per socket
    assert sum("out of system resource" in line for line in log) <= 1


def _closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# -- the pieces, in-process -----------------------------------------------------------------------------


def test_the_budget_counts_every_rows_prompt_and_new_tokens():
    passages = [{"title": "ab", "text": "cdef"}, {"title": "", "text": "gh"}, {"title": "", "text": "unused"}]
    count = len  # one token per character
    work = request_tokens(count, "qqq", passages, {"ndocs": 2, "max_new_tokens": 10}, None, limit=47)
    assert (work.rows, work.prompt_tokens, work.new_tokens) == (3, 3 * 3 + 6 + 2, 30) and work.complete
    work = request_tokens(count, "qqq", passages, {"ndocs": 2, "max_new_tokens": 10}, None, limit=10**6)
    assert work.prompt_tokens == 3 * 3 + (2 + 1) + (4 + 1) + (0 + 1) + (2 + 1)  # far within: UTF-8 bytes, not tokenised
    work = request_tokens(count, "qqq", passages, {"mode": "no_retrieval", "max_new_tokens": 10}, None, limit=10**6)
    assert (work.rows, work.tokens) == (1, 3 + 10)
    work = request_tokens(count, "qqq", None, {"ndocs": 4, "max_new_tokens": 5}, None, limit=10**6)
    assert (work.rows, work.tokens) == (5, 5 * 3 + 5 * 5)  # the index's passages: rows, not lengths
    work = request_tokens(count, "qqq", passages * 10, {"ndocs": 30, "max_new_tokens": 1}, None, limit=60)
    assert work.tokens > 60 and not work.complete  # counting stopped past the limit
    assert utf8_bytes("né") == 3 + 1


def test_the_budget_counts_the_chain_row():
    """--chain adds one row whose evidence is every used passage again (multi-hop tasks, two passages or more)."""
    passages = [{"title": "ab", "text": "cdef"}, {"title": "", "text": "gh"}, {"title": "", "text": "unused"}]
    count = len  # one token per character
    chain = {"ndocs": 2, "max_new_tokens": 10, "chain": True}
    work = request_tokens(count, "qqq", passages, chain, None, limit=70)
    # rows: no retrieval, "ab"+"cdef", ""+"gh", and the chain of both; the question in each
    assert (work.rows, work.prompt_tokens, work.new_tokens) == (4, 4 * 3 + (2 + 4 + 0 + 2) * 2, 40) and work.complete
    work = request_tokens(count, "qqq", passages, chain, None, limit=10**6)
    assert work.prompt_tokens == 4 * 3 + ((2 + 1) + (4 + 1) + (0 + 1) + (2 + 1)) * 2  # far within: UTF-8 bytes
    assert request_tokens(count, "qqq", passages, {**chain, "task": "popqa"}, None, limit=10**6).rows == 3  # single-hop: no chain
    assert request_tokens(count, "qqq", passages, {**chain, "ndocs": 1}, None, limit=10**6).rows == 2  # one passage: no chain
    assert request_tokens(count, "qqq", None, {**chain, "ndocs": 4}, None, limit=10**6).rows == 6  # the index's passages


def test_the_budget_counts_a_passage_as_the_engine_keeps_it():
    """Issue 31: with max_passage_tokens (the server's, never a request's) a passage costs at most that many tokens."""
    from openrag.answer import AnswerOptions

    passages = [{"title": "ab", "text": "x" * 100}, {"title": "", "text": "short"}]
    capped = AnswerOptions(max_passage_tokens=10, chain=True)
    work = request_tokens(len, "qqq", passages, {"ndocs": 2, "max_new_tokens": 1}, capped, limit=53)
    assert work.prompt_tokens == 4 * 3 + 2 * ((2 + 10) + (0 + 5)) and work.complete  # tokenised: each text <= 10
    work = request_tokens(len, "qqq", passages, {"ndocs": 2, "max_new_tokens": 1}, capped, limit=10**6)
    assert work.prompt_tokens == 4 * 3 + 2 * ((2 + 1 + 10) + (0 + 1 + 6))  # far within: UTF-8 bytes, capped too
    uncapped = request_tokens(len, "qqq", passages, {"ndocs": 2, "max_new_tokens": 1}, AnswerOptions(chain=True), limit=100)
    assert uncapped.tokens > 100 and not uncapped.complete


def test_host_names_and_settings():
    assert [host_name(h) for h in ("[::1]:8000", "LocalHost:80", "127.0.0.1", "[::1]")] == ["::1", "localhost", "127.0.0.1", "::1"]
    assert ServeSettings(allowed_hosts=("[::1]", " Example.org ")).allowed_hosts == ("::1", "example.org")
    for bad in ({"allowed_hosts": ()}, {"max_request_tokens": 0}, {"request_timeout_s": 0}, {"max_connections": 0}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)


class LoopingEngine:
    """Runs its model (one linear layer) until stopped; the engine call nobody should wait for."""

    def __init__(self):
        import threading

        import torch

        self.model, self.started = torch.nn.Linear(2, 2), threading.Event()

    def answer_batch(self, questions, passages=None, choices=None, **options):
        import torch

        self.started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.model(torch.zeros(1, 2))
            time.sleep(0.001)
        raise AssertionError("the engine call was never stopped")


async def _started(engine: LoopingEngine) -> None:
    for _ in range(1000):
        if engine.started.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine call never started")


def test_a_withdrawn_request_stops_its_engine_call():
    from openrag.serve import Batcher

    async def work():
        engine, start = LoopingEngine(), time.monotonic()
        batcher = Batcher(engine, max_wait_s=0)
        await batcher.start()
        waiter = asyncio.ensure_future(batcher.submit("q"))
        await _started(engine)
        waiter.cancel()  # what a deadline or a disconnect does
        while batcher.running and time.monotonic() - start < 60:  # the engine loops until it is interrupted
            await asyncio.sleep(0.01)
        stats = copy.copy(batcher.stats)  # before stop(), which would interrupt the call itself
        await batcher.stop()
        return stats

    stats = asyncio.run(work())
    assert stats.interrupted == 1 and stats.answered == 0


class StepEngine:
    """Answers each question after running its model a number of times: many for "long ...", two for others."""

    def __init__(self):
        import torch

        self.model, self.steps = torch.nn.Linear(2, 2), []

    def answer_batch(self, questions, passages=None, choices=None, **options):
        import torch

        for question in questions:
            for _ in range(400 if question.startswith("long") else 2):
                self.model(torch.zeros(1, 2))
                self.steps.append(question)
                time.sleep(0.002)
        return list(questions)


@pytest.mark.parametrize("lanes", [True, False])
def test_a_short_request_overtakes_a_long_one_in_its_own_lane(lanes):
    """With lanes, a short request's steps go between a long one's (it waits a step of it, not all of them);
    in one lane it waits for the whole long call, as every request did before issue 31."""
    from openrag.serve import Batcher

    async def work():
        engine = StepEngine()
        batcher = Batcher(engine, max_wait_s=0, long_tokens=100 if lanes else None)
        long = asyncio.ensure_future(batcher.submit("long question", tokens=10_000))
        while not engine.steps:
            await asyncio.sleep(0.01)
        short = await batcher.submit("short question", tokens=10)
        long_steps_before_short = engine.steps.count("long question")
        assert await long == "long question" and short == "short question"
        await batcher.stop()
        return engine.steps, long_steps_before_short

    steps, long_steps = asyncio.run(work())
    last_short = max(i for i, step in enumerate(steps) if step == "short question")
    if lanes:
        assert long_steps < 200 and steps[last_short + 1 :].count("long question") > 100, steps
        first_short = steps.index("short question")
        assert steps[first_short : last_short + 1].count("long question") < 50  # mostly one between (a busy CPU: more)
    else:
        assert steps[: last_short + 1].count("long question") == 400


def test_a_started_batcher_makes_the_engines_forwards_short():
    """Calls stop and take turns between the engine's forwards: the batcher bounds them when it starts."""
    from openrag.serve import Batcher

    class Pipeline:
        def __init__(self):
            self.engine, self.turned = self, False

        def take_turns(self):
            self.turned = True

    async def work():
        pipeline = Pipeline()
        batcher = Batcher(pipeline, max_wait_s=0)
        await batcher.start()
        await batcher.stop()
        return pipeline.turned

    assert asyncio.run(work())


def test_turns_go_to_the_short_lane_unless_a_long_call_was_passed_over_too_often():
    import torch

    from openrag.serve.turns import PASSED_LIMIT, Turns

    turns = Turns(torch.nn.Linear(2, 2))
    turns._waiting = {1: [1, 0, 0], 2: [0, 0, 1], 3: [0, 0, 2]}  # thread: [lane, times passed over, arrival]
    assert turns._next() == 2  # the short lane first, oldest first
    turns._waiting[1][1] = PASSED_LIMIT
    assert turns._next() == 1  # a long call passed over PASSED_LIMIT times goes next
    turns.close()


def test_a_call_waiting_for_its_turn_is_stopped_and_the_turn_moves_on():
    """A withdrawn call stops while it waits for the model; a forward that raised hands the turn on."""
    import threading

    import torch

    from openrag.serve.limits import Interrupted
    from openrag.serve.turns import Turns

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.entered, self.release = threading.Event(), threading.Event()

        def forward(self, x):
            self.entered.set()
            if not self.release.wait(10):
                raise AssertionError("never released")
            if x.sum() > 0:
                raise ValueError("a forward that fails")
            return x

    model = Gated()
    turns, outcomes = Turns(model), {}
    stops = {"holder": threading.Event(), "waiter": threading.Event(), "next": threading.Event()}

    def call(name: str, lane: int, x: float) -> None:
        try:
            with turns.taking_part(lane, stops[name]):
                model(torch.full((1,), x))
            outcomes[name] = "done"
        except (Interrupted, ValueError) as err:
            outcomes[name] = type(err).__name__

    holder = threading.Thread(target=call, args=("holder", 0, 1.0))
    holder.start()
    assert model.entered.wait(10)  # the holder's forward runs and holds the turn
    waiter = threading.Thread(target=call, args=("waiter", 1, 0.0))
    waiter.start()
    time.sleep(0.2)
    stops["waiter"].set()  # its requests withdrawn while it waits for the model
    waiter.join(5)
    assert outcomes == {"waiter": "Interrupted"}
    model.release.set()  # the holder's forward raises; the turn must still move on
    holder.join(5)
    following = threading.Thread(target=call, args=("next", 1, 0.0))
    following.start()
    following.join(5)
    assert outcomes == {"waiter": "Interrupted", "holder": "ValueError", "next": "done"}
    turns.close()


def test_stopping_the_server_stops_the_engine_call_in_progress():
    from openrag.serve import Batcher
    from openrag.serve.batcher import ShuttingDown

    async def work():
        engine = LoopingEngine()
        batcher = Batcher(engine, max_wait_s=0)
        waiter = asyncio.ensure_future(batcher.submit("q"))
        await _started(engine)
        start = time.monotonic()
        await batcher.stop()
        with pytest.raises(ShuttingDown):
            await waiter
        return time.monotonic() - start

    assert asyncio.run(work()) < 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's malloc_trim")
def test_memory_freed_by_a_large_call_is_handed_back():
    """glibc keeps what a thread freed in its arena, so the process stays at its peak after a large engine call
    (6.7 GB in the issue) until release_memory; the batcher calls it after large or stopped calls."""
    import threading

    import torch

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    start, peak = rss_mb(), []

    def call():  # many mid-sized tensors, some freed early: fragments like a decoding loop's temporaries
        rng, kept = random.Random(0), []
        for i in range(2_500):
            kept.append(torch.ones(rng.randint(2_000, 40_000)))  # 8 to 160 KB
            if i % 3 == 0:
                kept.pop(rng.randrange(len(kept)))
        peak.append(rss_mb())

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    release_memory()
    assert peak[0] - start > 100  # the call did hold memory
    assert rss_mb() - start < 0.25 * (peak[0] - start)
