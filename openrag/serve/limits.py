"""Limits on the work one request may cause, not only on its bytes.

- :func:`request_tokens` prices a request in tokens of work: the prompt of every row it makes (one per
  passage used, plus the no-retrieval row and, with ``chain``, the chain's) and the new tokens each row may
  generate. Over the budget, the request is refused before it reaches the queue.
- :func:`answer_or_give_up` waits for an answer until the client disconnects or the deadline passes, and
  cancels the request either way.
- :class:`Interrupter` stops a pipeline call that nobody waits for any more at its next forward of the model,
  so a cancelled request stops costing compute; :func:`release_memory` hands the memory a large call freed
  back to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import ctypes.util
import gc
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

# -- the token budget --------------------------------------------------------------------------------


def token_counter(pipeline) -> Callable[[str], int]:
    """Counts the tokens of a text with the pipeline's tokenizer (``pipeline.tokenizer``, a fast one), else its
    UTF-8 bytes: a byte-level BPE token covers at least one byte, so bytes never undercount."""
    backend = getattr(getattr(pipeline, "tokenizer", None), "backend_tokenizer", None)
    if backend is None:
        return utf8_bytes
    own = copy.deepcopy(backend)  # the pipeline's thread uses the original at the same time

    def count(text: str) -> int:
        return len(own.encode(text, add_special_tokens=False).ids) if text else 0

    return count


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8")) + 1  # + 1: a SentencePiece tokenizer adds a word-start piece


@dataclass
class Work:
    rows: int
    prompt_tokens: int  # the question in every row, and each used passage in its own
    new_tokens: int  # rows * max_new_tokens
    complete: bool = True  # False: counting stopped once the budget was exceeded, prompt_tokens is a lower bound

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.new_tokens

    def describe(self) -> str:
        prompt = f"{'more than ' if not self.complete else ''}{self.prompt_tokens:,}"
        return (f"{prompt} prompt tokens and up to {self.new_tokens:,} new ones over {self.rows} rows "
                f"(one per passage used, plus the no-retrieval row and any chain)")


def request_tokens(count: Callable[[str], int], question: str, passages: Sequence[dict] | None, options: dict,
                   defaults, limit: int) -> Work:
    """The work of one request: every row's prompt (the question, and its passage or chain) and its new tokens.

    ``options``: what the request set; ``defaults``: the pipeline's options (an AnswerOptions, or None: the
    most a request may ask for). A passage counts no more than the pipeline keeps of it (``max_passage_tokens``).
    Passages the pipeline will not use (past ``ndocs``) are not counted; without
    passages, the index's ``ndocs`` passages are counted as rows but not by length (the index is trusted).
    Counting stops once ``limit`` is exceeded, so a huge request costs little to refuse.
    """
    from ..answer.pipeline import has_chain
    from .schemas import MAX_NEW_TOKENS, MAX_PASSAGES

    def option(name: str, fallback):
        return options.get(name, getattr(defaults, name, fallback))

    ndocs, mode = option("ndocs", MAX_PASSAGES), option("mode", "adaptive_retrieval")
    used = ndocs if passages is None else min(ndocs, len(passages))
    chained = has_chain(option("task", "multihop"), option("chain", False), used)  # one more row: every used passage
    rows = 1 if mode == "no_retrieval" else 1 + used + chained
    work = Work(rows, count(question) * rows, rows * option("max_new_tokens", MAX_NEW_TOKENS))
    if passages is None or mode == "no_retrieval":
        return work
    copies = 1 + chained  # each used passage is in its own row, and in the chain's
    cap = option("max_passage_tokens", None)  # the engine cuts each passage's text to this many tokens

    def text(counted: int) -> int:
        return counted if cap is None else min(counted, cap)

    cheap = copies * sum(utf8_bytes(p.get("title", "")) + text(utf8_bytes(p["text"])) for p in passages[:used])
    if work.tokens + cheap <= limit or count is utf8_bytes:  # within the budget even by the upper bound
        work.prompt_tokens += cheap
        return work
    for i, passage in enumerate(passages[:used]):
        work.prompt_tokens += copies * (count(passage.get("title", "")) + text(count(passage["text"])))
        if work.tokens > limit:
            work.complete = i == used - 1
            break
    return work


# -- the deadline and the client ----------------------------------------------------------------------


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class DeadlineExceeded(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


async def answer_or_give_up(work: Awaitable, receive: Callable[[], Awaitable[dict]], timeout_s: float):
    """The result of ``work``, unless the client disconnects first (:class:`ClientGone`) or ``timeout_s``
    passes (:class:`DeadlineExceeded`); then ``work`` is cancelled. ``receive``: the request's ASGI receive,
    whose body has been read already, so the next message it gives is the disconnect."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pending = [t for t in (task, watcher) if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if task in done:
        return task.result()
    if watcher in done:
        raise ClientGone()
    raise DeadlineExceeded(timeout_s)


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# -- stopping a pipeline call and returning its memory ------------------------------------------------------


class Interrupted(Exception):
    """A pipeline call was stopped because none of its requests waited for it any more."""

    def __init__(self, message: str = "the pipeline call was stopped: none of its requests waits for it any more"):
        super().__init__(message)


class Interrupter:
    """Stops a pipeline call running in a worker thread at its next step.

    A hook run before every step raises :class:`Interrupted` when the stop event of the calling thread's
    current call (:meth:`watching`) is set: on the built-in engine a forward pre-hook of the model (a forward
    is one prefill or one decoding step), on vLLM a hook before each engine step (the vLLM engine then aborts
    the call's requests). A call stops within one step; other threads' calls are untouched."""

    def __init__(self, register_hook):
        self._stops: dict[int, threading.Event] = {}
        self._handle = register_hook(self._check)

    @classmethod
    def for_pipeline(cls, pipeline) -> Interrupter | None:
        """One for ``pipeline`` (an OpenRAG): on its torch model, else on its generation engine's steps (vLLM);
        None where it has neither."""
        model = getattr(pipeline, "model", None)
        if hasattr(model, "register_forward_pre_hook"):
            return cls(model.register_forward_pre_hook)
        register = getattr(getattr(pipeline, "engine", None), "register_step_hook", None)
        return cls(register) if register is not None else None

    def _check(self, module, args) -> None:
        stop = self._stops.get(threading.get_ident())
        if stop is not None and stop.is_set():
            raise Interrupted()

    @contextlib.contextmanager
    def watching(self, stop: threading.Event):
        ident = threading.get_ident()
        self._stops[ident] = stop
        try:
            yield
        finally:
            self._stops.pop(ident, None)

    def close(self) -> None:
        self._handle.remove()


def release_memory() -> None:
    """Return the memory a large pipeline call freed: glibc keeps freed blocks in its arenas (the process stays
    at its peak) until ``malloc_trim``; torch keeps freed CUDA blocks in its cache until ``empty_cache``."""
    gc.collect()  # an interrupted call's traceback holds its frames, and their KV caches, in cycles
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has none
    except OSError:
        return None


_LIBC = _libc()
