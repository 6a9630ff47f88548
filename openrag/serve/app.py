"""The HTTP API and the page: ``create_app(pipeline, settings)`` returns a FastAPI application.

    POST /v1/answer             {question, passages?, mode?, ndocs?, ...} -> the pipeline's answer object
    POST /v1/chat/completions   OpenAI's chat format; the evidence rides in the extra field ``openrag``
    GET  /health                status, queue depth and batching counters
    GET  /                      the page (page.html): ask, and see the answer, the decision and the evidence

Every error is JSON in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; internal errors
are logged with their traceback and answered with a generic message, never the trace itself.

Limits (README, "Security"): a Host header that is not an allowed name is refused (DNS rebinding); the body
is bounded in bytes and must arrive in time; a request is priced in tokens of work and refused over the
budget; its answer is given up, and its pipeline work cancelled, when its deadline passes or its client leaves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field, fields
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..answer import AnswerOptions
from ..bundled_names import DEFAULT_NAME
from ..errors import InputError
from ..flags import flag_metadata
from ..tasks import get_task
from .batcher import Batcher, Pipeline, QueueFull, ShuttingDown
from .limits import ClientGone, DeadlineExceeded, answer_or_give_up, request_tokens, token_counter
from .schemas import AnswerRequest, ChatRequest

log = logging.getLogger("openrag.serve")

API_KEY_ENV = "OPENRAG_API_KEY"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
INTERNAL_ERROR = "internal error while answering; the server log has the details"  # the whole 500 message: no trace


@dataclass
class ServeSettings:
    """How the server behaves. The fields with a ``help`` are ``openrag serve`` flags of the same name, in the
    flag group their metadata names (:func:`openrag.flags.add_field_flags`); the command sets the others from
    its own flags (the model, the API key or its environment variable, the Host names for the address bound)."""

    model_name: str = DEFAULT_NAME  # reported by /health and in chat completions' ``model``
    api_key: str | None = None  # when set, /v1/* need ``Authorization: Bearer <api_key>``
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names answered ("*": any, "*.x.org": subdomains)
    max_batch: int = field(default=8, metadata=flag_metadata("server", "questions answered by one pipeline call"))
    queue_size: int = field(default=64, metadata=flag_metadata(
        "server", "requests that may wait; beyond it the server answers 503 with Retry-After"))
    max_wait_ms: float = field(default=5.0, metadata=flag_metadata(
        "server", "how long the first request of a batch waits for others to join it"))
    max_body_bytes: int = field(default=1_000_000, metadata=flag_metadata("server", "larger bodies get 413"))
    max_request_tokens: int = field(default=16_384, metadata=flag_metadata(
        "limits", "tokens of work one request may ask for: the prompt of each row it makes (one per passage used, "
        "plus the no-retrieval row and any chain) and the new tokens of each; more gets 413 (default: %(default)s)"))
    long_request_tokens: int = field(default=2_048, metadata=flag_metadata(
        "limits", "requests of more tokens of work than this are answered in a lane of their own, whose forwards "
        "wait while a shorter request's run, so that they cannot hold short requests up (built-in engine; "
        "default: %(default)s)"))
    request_timeout_s: float = field(default=120.0, metadata=flag_metadata(
        "limits", "seconds from a request read to its answer, queue included; then 504 and its work is stopped, as "
        "it is when the client disconnects (default: %(default)s)"))
    header_timeout_s: float = field(default=10.0, metadata=flag_metadata(
        "limits", "seconds a connection has to send each request's headers, and then its body; then it is closed "
        "(default: %(default)s)"))
    idle_timeout_s: float = field(default=5.0, metadata=flag_metadata(
        "limits", "seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive; default: %(default)s)"))
    max_connections: int = field(default=256, metadata=flag_metadata(
        "limits", "open connections; a new one beyond closes the oldest idle one (or one still sending headers), else "
        "gets 503; lowered to fit the process's file limit (default: %(default)s)"))

    @classmethod
    def flag_fields(cls, group: str | None = None) -> list:
        """The fields that are ``openrag serve`` flags: of ``group`` ("server" or "limits"), or of any."""
        return [f for f in fields(cls) if "group" in f.metadata and group in (None, f.metadata["group"])]

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "max_body_bytes", "max_request_tokens", "long_request_tokens", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be at least 0, got {self.max_wait_ms}")
        for name in ("request_timeout_s", "header_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
        self.allowed_hosts = tuple(h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip())
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty; name the hosts to answer, or '*' for any")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty; give a non-empty key or none")


def create_app(pipeline: Pipeline, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    answering = Answering(pipeline, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await answering.batcher.start()
        yield
        await answering.batcher.stop()

    app = FastAPI(title="openrag", summary="Open-RAG answers with adaptive retrieval and their evidence",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = answering.batcher
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.header_timeout_s)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    _install_error_handlers(app)
    _install_routes(app, answering)
    return app


class Answering:
    """One request's way from its checked body to its answer: the task's choices, the token budget, the queue,
    the deadline, and each failure as the API error that says what happened."""

    def __init__(self, pipeline: Pipeline, settings: ServeSettings):
        self.settings = settings
        self.batcher = Batcher(pipeline, settings.max_batch, settings.queue_size, settings.max_wait_ms / 1000,
                               settings.long_request_tokens)
        self.count_tokens = token_counter(pipeline)
        self.defaults = getattr(pipeline, "options", None) or AnswerOptions()

    async def __call__(self, request: Request, question: str, body) -> dict:
        settings, batcher = self.settings, self.batcher
        passages, options = body.passage_dicts(), body.options()
        try:  # the task's choices, before the request waits in the queue (the one check: tasks.Task.check_choices)
            get_task(options.get("task", self.defaults.task)).check_choices(body.choices)
        except InputError as err:
            raise ApiError(422, str(err), "invalid_request_error", param="choices") from None
        work = await asyncio.to_thread(request_tokens, self.count_tokens, question, passages, options, self.defaults,
                                       settings.max_request_tokens)
        if work.tokens > settings.max_request_tokens:
            batcher.stats.over_budget += 1
            raise ApiError(413, f"this request needs {work.describe()}, more than this server's budget of "
                           f"{settings.max_request_tokens:,} tokens per request (max_request_tokens); send fewer or "
                           "shorter passages, or a lower ndocs or max_new_tokens", "invalid_request_error",
                           param="max_new_tokens" if work.new_tokens > settings.max_request_tokens or not passages
                           else "passages")
        try:
            answer = await answer_or_give_up(batcher.submit(question, passages, body.choices, options, work.tokens),
                                             request.receive, settings.request_timeout_s)
        except ClientGone:
            batcher.stats.disconnected += 1
            raise ApiError(499, "the client closed the connection before its answer was ready; the request was "
                           "cancelled", "client_closed") from None
        except DeadlineExceeded:
            batcher.stats.timed_out += 1
            raise ApiError(504, f"no answer within {settings.request_timeout_s:g} s, this server's limit per request "
                           "(request_timeout_s); the request was cancelled. Send fewer passages or a lower "
                           "max_new_tokens, or retry when the server is less busy", "timeout_error") from None
        except InputError as err:  # input the pipeline cannot answer (longer than the context window)
            raise ApiError(422, str(err), "invalid_request_error") from None
        except (QueueFull, ShuttingDown):
            raise
        except Exception as err:
            log.error("answering %r failed", question[:80], exc_info=err)
            raise ApiError(500, INTERNAL_ERROR, "server_error") from None
        return _finite(answer.to_dict())


def _install_routes(app: FastAPI, ask: Answering) -> None:
    settings, batcher = ask.settings, ask.batcher
    page, page_csp = _page()

    async def authorised(request: Request) -> None:
        """Run as a dependency, so that it answers 401 before the body is even validated."""
        _check_key(request, settings.api_key)

    @app.post("/v1/answer", dependencies=[Depends(authorised)])
    async def answer(body: AnswerRequest, request: Request):
        return JSONResponse(await ask(request, body.question, body))

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat(body: ChatRequest, request: Request):
        try:
            question = body.question()
        except ValueError as err:
            raise ApiError(422, str(err), "invalid_request_error", param="messages") from None
        result = await ask(request, question, body)
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": settings.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                         "finish_reason": "stop", "logprobs": None}],
            "openrag": result,
        })

    @app.get("/health")
    async def health():
        stats = batcher.stats
        return {"status": "ok", "model": settings.model_name, "auth": settings.api_key is not None,
                "queue": {"waiting": batcher.waiting, "capacity": settings.queue_size, "max_batch": settings.max_batch},
                "running": batcher.running, "answered": stats.answered, "failed": stats.failed,
                "rejected": stats.rejected, "over_budget": stats.over_budget, "timed_out": stats.timed_out,
                "disconnected": stats.disconnected, "interrupted": stats.interrupted,
                "pipeline_calls": stats.pipeline_calls, "largest_batch": stats.largest_batch,
                "limits": {"max_request_tokens": settings.max_request_tokens, "long_request_tokens": settings.long_request_tokens,
                           "request_timeout_s": settings.request_timeout_s, "max_body_bytes": settings.max_body_bytes}}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp})


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


def error_response(status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None,
                   details: list | None = None) -> JSONResponse:
    error = {"message": message, "type": kind, "param": param, "code": status}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return error_response(err.status, err.message, err.kind, err.param, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        details = [_error_detail(e) for e in err.errors()]
        first = details[0] if details else {"field": "body", "message": "invalid request"}
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return error_response(422, message, "invalid_request_error", first["field"], details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if isinstance(err.__cause__, UnicodeDecodeError):  # FastAPI's 400 "error parsing the body", for bytes
            return error_response(422, f"body: not UTF-8 ({err.__cause__}); send JSON encoded in UTF-8",
                                  "invalid_request_error", "body")
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(err.status_code, str(err.detail), kind, headers=getattr(err, "headers", None))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, err: QueueFull):
        return error_response(503, f"{err}; retry after {err.retry_after} s", "server_busy",
                              headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(ShuttingDown)
    async def closing(request: Request, err: ShuttingDown):
        return error_response(503, str(err), "server_busy", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return error_response(500, INTERNAL_ERROR, "server_error")


def _error_detail(error: dict) -> dict:
    """One pydantic error as ``{field, message}``, the field a dotted path inside the body."""
    loc, message = tuple(error.get("loc", ())), error.get("msg", "invalid value")
    if error.get("type") == "json_invalid":
        where = loc[1] if len(loc) > 1 else "?"
        return {"field": "body", "message": f"invalid JSON ({error.get('ctx', {}).get('error', message)} at character {where})"}
    if loc == ("body",):
        message += " (send a JSON object with Content-Type: application/json)"
    return {"field": _field_name(loc), "message": message}


def _field_name(loc) -> str:
    """``("body", "passages", 0, "text")`` -> ``passages.0.text``; the whole body (bad JSON) -> ``body``."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                       "authentication_error", headers={"WWW-Authenticate": "Bearer"})


def _finite(value):
    """JSON has no NaN or infinity: such floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _page() -> tuple[str, str]:
    """The page and a Content-Security-Policy that allows exactly its inline script and style."""
    html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before any handler reads it, and one
    that has not all arrived within ``timeout_s`` is answered 408 (a client trickling its body holds nothing)."""

    def __init__(self, app, max_bytes: int, timeout_s: float = ServeSettings.header_timeout_s):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await error_response(400, "Content-Length is not a number", "invalid_request_error")(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                response = error_response(408, f"the request body did not arrive within {self.timeout_s:g} s "
                                          "(header_timeout_s)", "invalid_request_error", headers={"Connection": "close"})
                return await response(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = error_response(413, f"the request body is larger than {self.max_bytes} bytes", "invalid_request_error",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)


class HostCheck:
    """ASGI middleware: a request whose Host header names no allowed host is answered 400.

    Against DNS rebinding: a web page whose domain an attacker re-points at 127.0.0.1 can send requests to a
    local server and read the answers (a private index's passages among them), but its requests carry the
    attacker's name in Host. ``allowed``: names (lower case, IPv6 without brackets), ``*.example.org`` for
    its subdomains, ``*`` for any."""

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app, self.allowed = app, allowed
        self.any = "*" in allowed
        self.names = {h for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in allowed if h.startswith("*."))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any:
            return await self.app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        name = host_name(host)
        if name in self.names or (self.suffixes and name.endswith(self.suffixes)):
            return await self.app(scope, receive, send)
        shown = f"the Host header {host[:100]!r}" if host else "a request without a Host header"
        response = error_response(400, f"{shown} names no host this server answers to ({', '.join(self.allowed)}); "
                                  "to serve another name, start it with --allowed_hosts", "invalid_request_error",
                                  param="Host")
        await response(scope, receive, send)


def host_name(host: str) -> str:
    """``[::1]:8000`` -> ``::1``; ``LocalHost:8000`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


class SecurityHeaders:
    """ASGI middleware: headers that stop sniffing, referrers and caching on every response."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
