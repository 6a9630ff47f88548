"""Dynamic batching: concurrent requests wait in a bounded queue and are answered together.

One worker task drains the queue: it takes the first waiting request, gathers those that arrive within
``max_wait_s`` (up to ``max_batch``), splits them into groups that can share one pipeline call (same options,
passages given or not), and runs each group's ``pipeline.answer_batch`` in a thread so the event loop keeps
accepting requests. While the pipeline works, new requests pile up and form the next batch: under load the
batches grow by themselves, with no lock serialising requests one at a time.

A full queue is refused at once (:class:`QueueFull`, the API's 503) rather than letting waits grow without
bound. If a batch fails, its requests are retried one by one, so one bad request fails alone.

A request whose waiter is cancelled (its client disconnected, or its deadline passed) leaves the queue at
once, so abandoned requests never hold slots that live ones are refused for, and it is never handed to the
pipeline; once no request of the pipeline call in progress waits for it, the call is stopped at its next step
(:class:`limits.Interrupter`). After a large or stopped call the freed memory is handed back.

Lanes. With ``long_tokens`` set and a pipeline whose model can take turns (the built-in one), a request of more
tokens of work than that waits in the long lane, the others in the short lane; each lane has its own worker and
pipeline call, and the two calls share the model a forward at a time, the short lane's first (:mod:`.turns`). So a
short request is never queued behind a long one: it waits at most one forward of it (a bounded slice).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .limits import Interrupted, Interrupter, release_memory
from .turns import Turns

log = logging.getLogger(__name__)


RELEASE_AFTER_TOKENS = 8_192  # pipeline calls with at least this many tokens of work hand their memory back
SHORT, LONG = 0, 1  # the lanes; a lower lane's forwards go first
STOP_WAIT_S = 10.0  # how long stop() waits for the pipeline call in progress to stop


class Pipeline(Protocol):
    """What the server needs of a pipeline (``openrag.OpenRAG`` is one): answers with ``to_dict()``.

    Used when present: ``model`` (a torch module: cancelled calls stop at its next forward), ``tokenizer``
    (counts the token budget; else UTF-8 bytes) and ``options`` (the defaults of the options a request
    leaves out)."""

    def answer_batch(self, questions: Sequence[str], passages: Sequence[Sequence] | None = None,
                     choices: Sequence | None = None, **options) -> list[Any]: ...


class QueueFull(Exception):
    """The queue holds ``capacity`` requests already; ``retry_after`` is a guess at when one will be free."""

    def __init__(self, capacity: int, retry_after: int):
        super().__init__(f"the server is busy: {capacity} requests are already waiting")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    pass


@dataclass(eq=False)  # hashed by identity: the queue is a dict of jobs
class Job:
    question: str
    passages: list[dict] | None  # None: let the pipeline's retriever find them
    choices: list[str] | None
    options: dict
    future: asyncio.Future
    tokens: int = 0  # the work it asked for (limits.request_tokens)
    lane: int = SHORT

    @property
    def group(self) -> tuple:
        return tuple(sorted(self.options.items())), self.passages is None


@dataclass
class _Call:
    jobs: list[Job]
    stop: threading.Event  # set: the call is stopped at the model's next forward
    thread: asyncio.Future  # the pipeline call, in a worker thread


@dataclass
class BatcherStats:
    batches: int = 0
    pipeline_calls: int = 0
    answered: int = 0
    failed: int = 0
    rejected: int = 0  # queue full
    over_budget: int = 0  # more tokens of work than max_request_tokens
    timed_out: int = 0  # no answer before the request's deadline
    disconnected: int = 0  # the client left before its answer
    largest_batch: int = 0
    interrupted: int = 0  # pipeline calls stopped because none of their requests waited any more
    busy_seconds: float = 0.0
    recent_call_seconds: float = 0.0  # moving average of one pipeline call
    sizes: dict[int, int] = field(default_factory=dict)  # pipeline call size -> count


class Batcher:
    def __init__(self, pipeline: Pipeline, max_batch: int = 8, queue_size: int = 64, max_wait_s: float = 0.005,
                 long_tokens: int | None = None):
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch and queue_size must be at least 1 and max_wait_s at least 0")
        self.pipeline = pipeline
        self.max_batch, self.queue_size, self.max_wait_s = max_batch, queue_size, max_wait_s
        self.long_tokens = long_tokens  # a request of more tokens of work goes to the long lane (None: one lane)
        self.stats = BatcherStats()
        # The queue, oldest first: a dict (insertion-ordered), so that a withdrawn job leaves it at once.
        self._waiting: dict[Job, None] = {}
        self._arrived = {SHORT: asyncio.Event(), LONG: asyncio.Event()}  # set when a job joins the lane's queue
        self._workers: dict[int, asyncio.Task] = {}
        self._interrupter: Interrupter | None = None
        self._turns: Turns | None = None  # None: one lane (the pipeline's model cannot take turns, or no long_tokens)
        self._current: dict[int, _Call] = {}  # the pipeline call in progress, per lane

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests in the pipeline calls in progress."""
        return sum(len(call.jobs) for call in self._current.values())

    async def start(self) -> None:
        for lane, worker in list(self._workers.items()):
            if worker.done():  # a worker that died must not leave requests waiting
                if not worker.cancelled() and worker.exception() is not None:
                    log.error("the batching worker stopped; starting a new one", exc_info=worker.exception())
                del self._workers[lane]
        if self._interrupter is None:
            self._interrupter = Interrupter.for_pipeline(self.pipeline)
            engine = getattr(self.pipeline, "engine", None)
            if hasattr(engine, "take_turns"):  # the built-in engine: calls stop and take turns between its forwards
                engine.take_turns()
        if self.long_tokens is not None and self._turns is None:
            self._turns = Turns.for_pipeline(self.pipeline)
        for lane in (SHORT, LONG) if self._turns is not None else (SHORT,):
            if lane not in self._workers:
                self._workers[lane] = asyncio.create_task(self._work(lane), name=f"openrag-batcher-{lane}")

    async def stop(self) -> None:
        """Stop taking work: the pipeline calls in progress are stopped (at most ``STOP_WAIT_S`` waited for), and
        their requests and those still waiting are failed with :class:`ShuttingDown`."""
        if not self._workers:
            return
        calls = list(self._current.values())
        for call in calls:
            call.stop.set()
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        jobs = [job for call in calls for job in call.jobs]
        if calls:  # their threads stop at the model's next forward, while the hooks are still there
            await asyncio.wait([call.thread for call in calls], timeout=STOP_WAIT_S)
            for call in calls:
                if call.thread.done() and not call.thread.cancelled():
                    call.thread.exception()  # retrieved: nobody else will
        for hooks in (self._interrupter, self._turns):
            if hooks is not None:
                hooks.close()
        self._interrupter = self._turns = None
        jobs.extend(self._waiting)
        self._waiting.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server is shutting down"))

    async def submit(self, question: str, passages: list[dict] | None = None, choices: list[str] | None = None,
                     options: dict | None = None, tokens: int = 0):
        """Queue one question and wait for its answer (the pipeline's answer object). Cancelling the wait
        withdraws the question, and stops the pipeline call it is in once no other question of it waits."""
        await self.start()
        lane = LONG if self._turns is not None and tokens > self.long_tokens else SHORT
        job = Job(question, passages, choices, dict(options or {}), asyncio.get_running_loop().create_future(), tokens, lane)
        if len(self._waiting) >= self.queue_size:
            self.stats.rejected += 1
            raise QueueFull(self.queue_size, self.retry_after())
        self._waiting[job] = None
        self._arrived[lane].set()
        try:
            return await job.future
        finally:
            self._waiting.pop(job, None)  # withdrawn while waiting: its slot is free for the next request

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch: whole seconds, at least 1."""
        per_call = self.stats.recent_call_seconds or 1.0
        return max(1, math.ceil(per_call * math.ceil(self.waiting / self.max_batch)))

    async def _work(self, lane: int) -> None:
        while True:
            jobs = await self._gather(lane)
            jobs = [j for j in jobs if not j.future.done()]  # withdrawn while the batch gathered
            if not jobs:
                continue
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                await self._answer(group, lane)

    async def _gather(self, lane: int) -> list[Job]:
        """The lane's first waiting job and whatever arrives within ``max_wait_s``, at most ``max_batch``."""
        while not any(job.lane == lane for job in self._waiting):
            self._arrived[lane].clear()
            await self._arrived[lane].wait()
        jobs = self._take(1, lane)
        if self.max_wait_s and sum(job.lane == lane for job in self._waiting) < self.max_batch - 1:
            await asyncio.sleep(self.max_wait_s)
        return jobs + self._take(self.max_batch - 1, lane)

    def _take(self, n: int, lane: int) -> list[Job]:
        """The lane's ``n`` oldest waiting jobs (fewer if fewer wait), out of the queue."""
        jobs = list(itertools.islice((job for job in self._waiting if job.lane == lane), n))
        for job in jobs:
            del self._waiting[job]
        return jobs

    async def _answer(self, jobs: list[Job], lane: int) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # withdrawn while an earlier group was answered
        if not jobs:
            return
        try:
            answers = await self._call(jobs, lane)
        except Interrupted:
            self.stats.interrupted += 1
            return  # nobody waits for these answers
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests, never swallowed
            if len(jobs) == 1:
                self._settle(jobs[0], error=err)
                return
            log.warning("a batch of %d failed (%s: %s); answering its requests one by one", len(jobs),
                        type(err).__name__, err)
            for job in jobs:
                await self._answer([job], lane)
            return
        for job, answer in zip(jobs, answers):
            self._settle(job, answer=answer)

    async def _call(self, jobs: list[Job], lane: int) -> list:
        passages = None if jobs[0].passages is None else [j.passages for j in jobs]
        choices = [j.choices for j in jobs] if any(j.choices for j in jobs) else None
        stop = threading.Event()

        def withdrawn(_future) -> None:
            if all(j.future.done() for j in jobs):
                stop.set()

        for job in jobs:
            job.future.add_done_callback(withdrawn)
        start = time.perf_counter()
        thread = asyncio.ensure_future(asyncio.to_thread(self._run, stop, lane, sum(j.tokens for j in jobs),
                                                         [j.question for j in jobs], passages, choices, jobs[0].options))
        self._current[lane] = _Call(jobs, stop, thread)
        try:
            answers = await asyncio.shield(thread)  # cancelling the worker leaves the thread to stop()
        finally:
            del self._current[lane]
            for job in jobs:
                job.future.remove_done_callback(withdrawn)
            seconds = time.perf_counter() - start
            self.stats.busy_seconds += seconds
            self.stats.pipeline_calls += 1
            self.stats.sizes[len(jobs)] = self.stats.sizes.get(len(jobs), 0) + 1
            previous = self.stats.recent_call_seconds
            self.stats.recent_call_seconds = seconds if not previous else 0.8 * previous + 0.2 * seconds
        if len(answers) != len(jobs):
            raise RuntimeError(f"the pipeline returned {len(answers)} answers for {len(jobs)} questions")
        return answers

    def _run(self, stop: threading.Event, lane: int, tokens: int, questions, passages, choices, options: dict) -> list:
        """In the worker thread: one pipeline call, stopped when ``stop`` is set, taking turns at the model with the
        other lane's call; then the memory handed back."""
        try:
            with (self._interrupter.watching(stop) if self._interrupter else contextlib.nullcontext(),
                  self._turns.taking_part(lane, stop) if self._turns else contextlib.nullcontext()):
                return self.pipeline.answer_batch(questions, passages, choices, **options)
        except Interrupted:
            pass  # raised afresh below: this one's traceback holds the call's frames, and their tensors
        finally:
            if stop.is_set() or tokens >= RELEASE_AFTER_TOKENS:
                release_memory()
        raise Interrupted()

    def _settle(self, job: Job, answer=None, error: Exception | None = None) -> None:
        if job.future.done():
            return
        if error is None:
            self.stats.answered += 1
            job.future.set_result(answer)
        else:
            self.stats.failed += 1
            job.future.set_exception(error)
