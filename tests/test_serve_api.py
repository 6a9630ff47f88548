"""In-process tests of the HTTP API with a fake pipeline: every endpoint, every bad input, batching and 503s."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field

import httpx
import pytest
from fastapi.testclient import TestClient

from openrag.errors import InputError
from openrag.serve import ServeSettings, create_app
from openrag.serve.schemas import MAX_PASSAGE_CHARS, MAX_PASSAGES, MAX_QUESTION_CHARS

LOCAL = "http://localhost"  # the server answers loopback Host names only (DNS rebinding; test_serve_abuse.py)


@dataclass
class FakeAnswer:
    question: str
    text: str
    retrieved: bool
    mode: str
    candidates: list = field(default_factory=list)
    retrieval_value: float | None = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class FakePipeline:
    """Answers ``question.upper()``; one candidate per passage; records every call.

    ``gate``: when set, each call waits for it (to hold the worker busy while requests pile up)."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[dict] = []
        self.gate = gate
        self.lock = threading.Lock()

    def answer_batch(self, questions, passages=None, choices=None, **options):
        with self.lock:
            self.calls.append({"questions": list(questions), "passages": passages, "choices": choices, "options": options})
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        answers = []
        for i, q in enumerate(questions):
            if q == "explode":
                raise RuntimeError("secret detail /home/user/model.bin")
            if q == "too long for the model":
                raise InputError("the question exceeds the context window of 2048 tokens; shorten it")
            if q == "internal value error":
                raise ValueError("secret numpy detail")
            ps = passages[i] if passages else []
            candidates = [{"passage": p, "text": q.upper(), "score": 1.0, "relevance": 0.9, "groundedness": 0.5,
                           "utility": -0.5, "seq_score": 0.1} for p in ps]
            answers.append(FakeAnswer(q, q.upper(), bool(ps), options.get("mode", "adaptive_retrieval"), candidates,
                                      retrieval_value=float("nan") if q == "nan" else 0.25))
        return answers


@pytest.fixture
def pipeline():
    return FakePipeline()


@pytest.fixture
def client(pipeline):
    with TestClient(create_app(pipeline, ServeSettings(model_name="tiny")), base_url=LOCAL, raise_server_exceptions=False) as c:
        yield c


PASSAGES = [{"title": "Dune", "text": "Dune is a 1965 novel by Frank Herbert."}, {"title": "", "text": "Paris is in France."}]


# -- the endpoints -----------------------------------------------------------------------------------


def test_answer_returns_the_engines_answer_and_passes_options(client, pipeline):
    r = client.post("/v1/answer", json={"question": "who wrote dune?", "passages": PASSAGES, "mode": "always_retrieve",
                                        "ndocs": 2, "threshold": 0.3, "w_use": 0.5, "use_utility": False})
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == "WHO WROTE DUNE?" and body["retrieved"] is True
    assert [c["passage"] for c in body["candidates"]] == PASSAGES
    call = pipeline.calls[-1]
    assert call["questions"] == ["who wrote dune?"] and call["passages"] == [PASSAGES]
    assert call["options"] == {"mode": "always_retrieve", "ndocs": 2, "threshold": 0.3, "w_use": 0.5, "use_utility": False}


def test_answer_without_passages_lets_the_engine_retrieve(client, pipeline):
    assert client.post("/v1/answer", json={"question": "q"}).status_code == 200
    assert pipeline.calls[-1]["passages"] is None and pipeline.calls[-1]["options"] == {}


@pytest.mark.parametrize("choices", [["a", "b", "c", "d"], ["only one"]])  # 1 to 5, as `ask` and Python take them
def test_answer_with_choices(client, pipeline, choices):
    r = client.post("/v1/answer", json={"question": "which?", "task": "arc_c", "choices": choices})
    assert r.status_code == 200
    assert pipeline.calls[-1]["choices"] == [choices] and pipeline.calls[-1]["options"] == {"task": "arc_c"}


@pytest.mark.parametrize("body, said", [
    ({"question": "which?", "task": "arc_c"}, "task arc_c needs the answer choices; give choices"),
    ({"question": "which?", "choices": ["a", "b"]}, "task multihop takes no answer choices; drop choices"),
    ({"question": "which?", "task": "popqa", "choices": ["a", "b"]}, "task popqa takes no answer choices"),
])
def test_choices_that_do_not_suit_the_task_get_422_naming_choices(client, pipeline, body, said):
    r = client.post("/v1/answer", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "choices" and said in error["message"] and error["type"] == "invalid_request_error"
    chat = {"messages": [{"role": "user", "content": body["question"]}], **{k: v for k, v in body.items() if k != "question"}}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 422 and r.json()["error"]["param"] == "choices"
    assert pipeline.calls == []


def test_non_finite_numbers_in_an_answer_become_null(client):
    r = client.post("/v1/answer", json={"question": "nan"})
    assert r.status_code == 200 and r.json()["retrieval_value"] is None


def test_chat_completions_in_openais_format(client, pipeline):
    r = client.post("/v1/chat/completions", json={
        "model": "whatever", "temperature": 0.7, "max_tokens": 12, "passages": PASSAGES[:1],
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"},
                     {"role": "assistant", "content": "an answer"}, {"role": "user", "content": " who wrote dune? "}]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "WHO WROTE DUNE?"},
                                "finish_reason": "stop", "logprobs": None}]
    assert body["openrag"]["candidates"][0]["passage"] == PASSAGES[0]
    assert pipeline.calls[-1]["questions"] == ["who wrote dune?"]
    assert pipeline.calls[-1]["options"] == {"max_new_tokens": 12}


def test_chat_accepts_content_parts(client, pipeline):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "who "}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "wrote it?"}]}]})
    assert r.status_code == 200 and pipeline.calls[-1]["questions"] == ["who wrote it?"]


def test_an_openai_client_works(pipeline):
    openai = pytest.importorskip("openai")
    with TestClient(create_app(pipeline, ServeSettings(model_name="tiny", api_key="k3y")), base_url=LOCAL) as http:
        client = openai.OpenAI(base_url=LOCAL + "/v1", api_key="k3y", http_client=http)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                               extra_body={"passages": PASSAGES})
    assert reply.choices[0].message.content == "HELLO"
    assert reply.model_extra["openrag"]["retrieved"] is True


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "tiny" and body["auth"] is False
    assert body["queue"] == {"waiting": 0, "capacity": 64, "max_batch": 8}


def test_page_is_served_with_a_policy_that_allows_exactly_its_script(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="question"' in r.text and "/v1/answer" in r.text
    script = re.search(r"<script>(.*?)</script>", r.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = r.headers["content-security-policy"]
    assert f"'sha256-{digest}'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"


# -- authentication ----------------------------------------------------------------------------------


@pytest.fixture
def locked(pipeline):
    with TestClient(create_app(pipeline, ServeSettings(api_key="s3cret")), base_url=LOCAL, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                                     {"Authorization": "Basic s3cret"}])
def test_api_key_is_required_on_the_api(locked, pipeline, headers):
    for path, body in [("/v1/answer", {"question": "q"}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}]})]:
        r = locked.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
    assert pipeline.calls == []


def test_a_missing_key_is_reported_before_the_body_is_read(locked):
    r = locked.post("/v1/answer", json={"not": "valid"})
    assert r.status_code == 401


def test_the_right_key_passes_and_page_and_health_stay_open(locked):
    assert locked.post("/v1/answer", json={"question": "q"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert locked.get("/").status_code == 200
    assert locked.get("/health").json()["auth"] is True


def test_the_api_key_comes_from_the_environment(monkeypatch):
    from openrag.commands.serve import resolve_api_key

    monkeypatch.setenv("OPENRAG_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("flag") == "flag"
    monkeypatch.delenv("OPENRAG_API_KEY")
    assert resolve_api_key(None) is None


def test_the_serve_flags_set_every_server_setting(monkeypatch):
    from dataclasses import fields

    from openrag.cli import build_parser
    from openrag.commands.serve import settings_from

    monkeypatch.delenv("OPENRAG_API_KEY", raising=False)
    defaults = ServeSettings()
    flagged = ServeSettings.flag_fields()
    assert {f.metadata["group"] for f in flagged} == {"server", "limits"}
    # the three the command sets from flags of its own (the model, the key or its variable, the Host names)
    assert {f.name for f in fields(ServeSettings)} - {f.name for f in flagged} == {"model_name", "api_key", "allowed_hosts"}
    line = ["serve", "--model_name", "tiny", "--host", "0.0.0.0"]
    for f in flagged:  # each flag given a value other than its default
        line += [f"--{f.name}", str(getattr(defaults, f.name) + 1)]
    settings = settings_from(build_parser(with_flags=["serve"]).parse_args(line))
    for f in flagged:
        assert getattr(settings, f.name) == getattr(defaults, f.name) + 1, f.name
    assert (settings.model_name, settings.api_key, settings.allowed_hosts) == ("tiny", None, ("*",))
    assert settings_from(build_parser(with_flags=["serve"]).parse_args(["serve"])) == defaults


# -- bad input: 422 naming the field, 413, no stack trace ---------------------------------------------


BAD_ANSWER_BODIES = [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({"question": 5}, "question"),
    ({"question": "x" * (MAX_QUESTION_CHARS + 1)}, "question"),
    ({"question": "q", "passages": "not a list"}, "passages"),
    ({"question": "q", "passages": [{"title": "t"}]}, "passages.0.text"),
    ({"question": "q", "passages": [{"text": "ok"}, {"text": "x" * (MAX_PASSAGE_CHARS + 1)}]}, "passages.1.text"),
    ({"question": "q", "passages": [{"text": "p"}] * (MAX_PASSAGES + 1)}, "passages"),
    ({"question": "q", "passages": [{"text": "p", "url": "u"}]}, "passages.0.url"),
    ({"question": "q", "mode": "sometimes"}, "mode"),
    ({"question": "q", "retrieval_rule": "vibes"}, "retrieval_rule"),
    ({"question": "q", "task": "chess"}, "task"),
    ({"question": "q", "query": "answer only"}, "query"),
    ({"question": "q", "ndocs": 0}, "ndocs"),
    ({"question": "q", "ndocs": "three"}, "ndocs"),
    ({"question": "q", "ndocs": True}, "ndocs"),
    ({"question": "q", "ndocs": "3"}, "ndocs"),
    ({"question": "q", "ndocs": 2.5}, "ndocs"),
    ({"question": "q", "chain": "yes"}, "chain"),
    ({"question": "q", "threshold": True}, "threshold"),
    ({"question": "q", "w_rel": "0.5"}, "w_rel"),
    ({"question": "q", "passages": [{"text": " \n "}]}, "passages.0.text"),
    ({"question": "q", "task": "arc_c", "choices": ["a", " "]}, "choices.1"),
    ({"question": "q", "max_new_tokens": 100_000}, "max_new_tokens"),
    ({"question": "q", "threshold": "high"}, "threshold"),
    ({"question": "q", "w_rel": 1e9}, "w_rel"),
    ({"question": "q", "use_utility": "maybe"}, "use_utility"),
    ({"question": "q", "choices": ["only one"]}, "choices"),
    ({"question": "q", "temperature": 0.5}, "temperature"),
    ([1, 2], "body"),
]


@pytest.mark.parametrize("body, field_name", BAD_ANSWER_BODIES)
def test_bad_answer_fields_get_422_naming_the_field(client, pipeline, body, field_name):
    r = client.post("/v1/answer", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == field_name and field_name in error["message"]
    assert pipeline.calls == []


BAD_CHAT_BODIES = [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * (MAX_QUESTION_CHARS + 1)}]}, "messages"),
    ({"messages": [{"role": "wizard", "content": "q"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "q"}], "stream": True}, "stream"),
    ({"messages": [{"role": "user", "content": "q"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "q"}], "max_tokens": True}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "q"}], "max_completion_tokens": "3"}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "q"}], "stream": "no"}, "stream"),
    ({"messages": [{"role": "user", "content": "q"}], "mode": "sometimes"}, "mode"),
]


@pytest.mark.parametrize("body, field_name", BAD_CHAT_BODIES)
def test_bad_chat_fields_get_422_naming_the_field(client, pipeline, body, field_name):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field_name
    assert pipeline.calls == []


@pytest.mark.parametrize("content", [b"{not json", b'{"question": "q",}', b"", b'{"question": "q", "threshold": NaN}'])
def test_invalid_json_gets_422(client, content):
    r = client.post("/v1/answer", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] in ("body", "threshold")


def test_a_body_that_is_not_utf8_gets_422_saying_so(client, pipeline):
    r = client.post("/v1/answer", content="{\"question\": \"caf\u00e9?\"}".encode("latin-1"),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "body" and "not UTF-8" in error["message"] and "byte 0xe9" in error["message"]
    assert pipeline.calls == []


def test_a_body_that_is_not_json_gets_422(client):
    r = client.post("/v1/answer", content=b"question=q", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "body"


@pytest.mark.parametrize("path, content, field_name", [
    ("/v1/answer", rb'{"question": "q \ud800"}', "question"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": "hi \ud83d"}]}', "messages.0.content"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}',
     "messages.0.content"),
])
def test_text_with_a_lone_surrogate_gets_422_naming_the_field(client, pipeline, path, content, field_name):
    """JSON may escape half of a UTF-16 pair (\\ud83d alone): no character, so no UTF-8 text to count or answer."""
    r = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field_name
    assert pipeline.calls == []


def test_bodies_over_the_limit_get_413_declared_or_streamed(pipeline):
    with TestClient(create_app(pipeline, ServeSettings(max_body_bytes=2_000)), base_url=LOCAL, raise_server_exceptions=False) as c:
        assert c.post("/v1/answer", json={"question": "q" * 1_500}).status_code == 200
        assert c.post("/v1/answer", json={"question": "q" * 2_500}).status_code == 413
        chunks = iter([b'{"question": "', b"q" * 2_500, b'"}'])  # no Content-Length: chunked
        r = c.post("/v1/answer", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "2000 bytes" in r.json()["error"]["message"]
    assert len(pipeline.calls) == 1


def test_engine_failures_never_leak_a_stack_trace(client):
    r = client.post("/v1/answer", json={"question": "explode"})
    assert r.status_code == 500
    text = r.text
    assert "Traceback" not in text and "secret" not in text and "model.bin" not in text
    assert r.json()["error"]["type"] == "server_error"


def test_input_the_engine_refuses_gets_422_with_its_reason(client):
    r = client.post("/v1/answer", json={"question": "too long for the model"})
    assert r.status_code == 422 and "context window" in r.json()["error"]["message"]
    # any other ValueError is the server's fault: 500, and its message stays in the log
    r = client.post("/v1/answer", json={"question": "internal value error"})
    assert r.status_code == 500 and "secret" not in r.text


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/v2/answer").json()["error"]["code"] == 404
    assert client.get("/v1/answer").status_code == 405


# -- batching and the bounded queue (concurrent requests through the ASGI app) -----------------------


async def _with_app(app, work):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as http:
            return await work(app, http)


async def _until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_concurrent_requests_are_answered_in_batches_grouped_by_options():
    gate = threading.Event()
    pipeline = FakePipeline(gate)
    app = create_app(pipeline, ServeSettings(max_batch=8, max_wait_ms=0))

    async def work(app, http):
        first = asyncio.create_task(http.post("/v1/answer", json={"question": "first"}))
        await _until(lambda: len(pipeline.calls) == 1)  # the worker is busy with "first"
        bodies = [{"question": f"a{i}", "mode": "always_retrieve", "passages": PASSAGES} for i in range(3)]
        bodies += [{"question": f"b{i}", "mode": "no_retrieval"} for i in range(2)]
        bodies += [{"question": "c0", "mode": "always_retrieve"}]  # same options, but no passages: the retriever's
        rest = [asyncio.create_task(http.post("/v1/answer", json=b)) for b in bodies]
        await _until(lambda: app.state.batcher.waiting == len(bodies))
        gate.set()
        responses = await asyncio.gather(first, *rest)
        return [r.json()["text"] for r in responses]

    texts = asyncio.run(_with_app(app, work))
    assert texts == ["FIRST", "A0", "A1", "A2", "B0", "B1", "C0"]
    assert [c["questions"] for c in pipeline.calls] == [["first"], ["a0", "a1", "a2"], ["b0", "b1"], ["c0"]]
    assert pipeline.calls[1]["passages"] == [PASSAGES] * 3 and pipeline.calls[3]["passages"] is None
    assert app.state.batcher.stats.largest_batch == 6


def test_a_full_queue_answers_503_with_retry_after():
    gate = threading.Event()
    pipeline = FakePipeline(gate)
    app = create_app(pipeline, ServeSettings(max_batch=1, queue_size=2, max_wait_ms=0))

    async def work(app, http):
        running = asyncio.create_task(http.post("/v1/answer", json={"question": "running"}))
        await _until(lambda: len(pipeline.calls) == 1)
        waiting = [asyncio.create_task(http.post("/v1/answer", json={"question": f"w{i}"})) for i in range(2)]
        await _until(lambda: app.state.batcher.waiting == 2)
        refused = await http.post("/v1/answer", json={"question": "one too many"})
        health = (await http.get("/health")).json()
        gate.set()
        done = await asyncio.gather(running, *waiting)
        return refused, health, done

    refused, health, done = asyncio.run(_with_app(app, work))
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "server_busy"
    assert health["queue"]["waiting"] == 2 and health["rejected"] == 1
    assert [r.status_code for r in done] == [200, 200, 200]


async def _post_then_leave(app, body: dict, leave: asyncio.Event) -> int:
    """POST /v1/answer straight into the ASGI app, as uvicorn would, from a client that disconnects once
    ``leave`` is set (httpx's ASGI transport cannot disconnect); the response's status."""
    payload = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/answer", "raw_path": b"/v1/answer", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(payload)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("localhost", 80)}
    unread = [{"type": "http.request", "body": payload, "more_body": False}]
    status = []

    async def receive():
        if unread:
            return unread.pop()
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def test_requests_whose_clients_left_free_their_queue_slots_at_once_and_are_never_answered():
    gate = threading.Event()
    pipeline = FakePipeline(gate)
    app = create_app(pipeline, ServeSettings(max_batch=2, queue_size=2, max_wait_ms=0))

    async def work(app, http):
        batcher = app.state.batcher
        running = asyncio.create_task(http.post("/v1/answer", json={"question": "running"}))
        await _until(lambda: len(pipeline.calls) == 1)  # the worker is busy; the queue fills up behind it
        leave = asyncio.Event()
        gone = [asyncio.create_task(_post_then_leave(app, {"question": f"gone{i}"}, leave)) for i in range(2)]
        await _until(lambda: batcher.waiting == 2)
        leave.set()
        gone = await asyncio.gather(*gone)
        health = (await http.get("/health")).json()
        live = [asyncio.create_task(http.post("/v1/answer", json={"question": f"live{i}"})) for i in range(2)]
        # each live request is queued or refused (the old code counted the withdrawn ones as waiting still)
        await _until(lambda: batcher.waiting + batcher.stats.rejected == health["queue"]["waiting"] + 2)
        gate.set()
        return gone, health, await asyncio.gather(running, *live)

    gone, health, done = asyncio.run(_with_app(app, work))
    assert gone == [499, 499]
    assert health["queue"]["waiting"] == 0 and health["disconnected"] == 2
    assert [r.status_code for r in done] == [200, 200, 200], [r.text for r in done]
    assert [r.json()["text"] for r in done] == ["RUNNING", "LIVE0", "LIVE1"]
    assert [c["questions"] for c in pipeline.calls] == [["running"], ["live0", "live1"]]  # a full batch of live ones
    assert app.state.batcher.stats.rejected == 0


def test_one_failing_request_does_not_fail_its_batch():
    gate = threading.Event()
    pipeline = FakePipeline(gate)
    app = create_app(pipeline, ServeSettings(max_batch=8, max_wait_ms=0))

    async def work(app, http):
        first = asyncio.create_task(http.post("/v1/answer", json={"question": "first"}))
        await _until(lambda: len(pipeline.calls) == 1)
        rest = [asyncio.create_task(http.post("/v1/answer", json={"question": q})) for q in ("ok1", "explode", "ok2")]
        await _until(lambda: app.state.batcher.waiting == 3)
        gate.set()
        return await asyncio.gather(first, *rest)

    responses = asyncio.run(_with_app(app, work))
    assert [r.status_code for r in responses] == [200, 200, 500, 200]
    assert responses[3].json()["text"] == "OK2"
    assert [c["questions"] for c in pipeline.calls] == [["first"], ["ok1", "explode", "ok2"], ["ok1"], ["explode"], ["ok2"]]


# Every answering option a request may set, with a value other than its default: written out here, from the
# README's list of request fields, not read from AnswerOptions or the schema under test.
REQUEST_OPTIONS = {"mode": "always_retrieve", "retrieval_rule": "meanp", "threshold": 0.3, "ndocs": 2, "chain": True,
                   "max_new_tokens": 7, "use_seqscore": False, "use_groundness": False, "use_utility": False,
                   "w_rel": 0.5, "w_sup": 0.25, "w_use": 2.0, "closed": False, "task": "popqa", "query": "question+answer"}


def test_every_request_option_reaches_the_pipeline(client, pipeline):
    from openrag.serve.schemas import AnswerFields

    assert set(AnswerFields.model_fields) == {*REQUEST_OPTIONS, "passages", "choices"}
    r = client.post("/v1/answer", json={"question": "q", "passages": PASSAGES, **REQUEST_OPTIONS})
    assert r.status_code == 200, r.text
    assert pipeline.calls[-1]["options"] == REQUEST_OPTIONS


def test_settings_are_checked():
    with pytest.raises(ValueError, match="queue_size"):
        ServeSettings(queue_size=0)
    with pytest.raises(ValueError, match="API key"):
        ServeSettings(api_key=" ")
