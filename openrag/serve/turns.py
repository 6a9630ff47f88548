"""Engine calls of several threads sharing one model, a forward at a time, short requests first.

The server answers short requests and long ones in separate pipeline calls (the batcher's lanes), each in a thread
of its own. :class:`Turns` lets them take turns at the model: a forward pre-hook waits for the calling thread's
turn, a forward hook (run even when the forward raised) hands the turn on. Of the threads waiting, the one of the
lowest lane goes first, so a short request runs between two forwards of a long one instead of after all of them
(the engine computes long rows in slices of bounded size: engine.TURN_FORWARD_TOKENS_CPU on a CPU). A thread passed over
:data:`PASSED_LIMIT` times in a row goes next, so long calls still progress under a stream of short ones.
A thread that takes no part (not inside :meth:`Turns.taking_part`) runs its forwards as they come.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

from .limits import Interrupted

PASSED_LIMIT = 4  # a waiting call gets at least one forward in every PASSED_LIMIT + 1
WAKE_S = 0.05  # how often a waiting thread looks at its stop event


class Turns:
    def __init__(self, model):
        self._cond = threading.Condition()
        self._holder: int | None = None  # the thread whose forward runs
        self._parts: dict[int, tuple[int, threading.Event]] = {}  # thread -> (lane, stop event)
        self._waiting: dict[int, list[int]] = {}  # thread -> [lane, times passed over, arrival]
        self._arrivals = itertools.count()
        self._handles = [model.register_forward_pre_hook(self._before),
                         model.register_forward_hook(self._after, always_call=True)]

    @classmethod
    def for_pipeline(cls, pipeline) -> Turns | None:
        """Turns on the ``pipeline``'s torch model; None where it has none (vLLM runs one call at a time)."""
        model = getattr(pipeline, "model", None)
        return cls(model) if hasattr(model, "register_forward_pre_hook") else None

    @contextlib.contextmanager
    def taking_part(self, lane: int, stop: threading.Event):
        """The calling thread's forwards wait for their turn (lane 0 first); while waiting, a set ``stop`` raises
        :class:`~openrag.serve.limits.Interrupted`."""
        ident = threading.get_ident()
        self._parts[ident] = (lane, stop)
        try:
            yield
        finally:
            del self._parts[ident]
            self._after(None, None, None)  # a forward interrupted past the hooks must not keep the turn

    def _before(self, module, args) -> None:
        ident = threading.get_ident()
        part = self._parts.get(ident)
        if part is None:
            return
        lane, stop = part
        with self._cond:
            self._waiting[ident] = [lane, 0, next(self._arrivals)]
            try:
                while self._holder is not None or self._next() != ident:
                    if stop.is_set():
                        raise Interrupted()
                    self._cond.wait(WAKE_S)
            finally:
                del self._waiting[ident]
            for waiting in self._waiting.values():
                waiting[1] += 1
            self._holder = ident

    def _next(self) -> int:
        """The waiting thread whose turn it is: one passed over too often, else the lowest lane, oldest first."""
        starved = [t for t, (_, passed, _) in self._waiting.items() if passed >= PASSED_LIMIT]
        if starved:
            return min(starved, key=lambda t: self._waiting[t][2])
        return min(self._waiting, key=lambda t: (self._waiting[t][0], self._waiting[t][2]))

    def _after(self, module, args, output) -> None:
        with self._cond:
            if self._holder == threading.get_ident():
                self._holder = None
                self._cond.notify_all()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
