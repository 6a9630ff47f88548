"""The server process: uvicorn, with bounds on the connections it holds.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``, our ``idle_timeout_s``) and bounds the
size of headers, but it has no timeout for a request's headers (a client that sends them a byte at a time,
or never finishes, holds its connection and file handle forever) and its ``limit_concurrency`` answers 503
to every new request once enough connections are open, ``/health`` included. So :class:`ConnectionGuard`
wraps uvicorn's own HTTP protocol:

- a connection gets ``header_timeout_s`` to send each request's headers (from when it opens, and again
  after each answer); then it is closed;
- at most ``max_connections`` are open: a new one closes the oldest that is idle or still sending headers,
  or, when every connection has a request in progress, is itself answered 503 and closed;
- what it closes is logged once, then counted and summed up once a minute, not a line per socket.

The body is bounded by the app (``BodyLimit``). :class:`RepeatFilter` does the same for asyncio's
"socket.accept() out of system resource", which it otherwise logs thousands of times a second.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections import Counter

log = logging.getLogger("openrag.serve")

LOG_EVERY_S = 60.0


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout_s: float):
        self.max_connections, self.header_timeout_s = max_connections, header_timeout_s
        self.open: dict[tuple, _GuardedProtocol] = {}  # by peer address, oldest first
        self.closed: Counter[str] = Counter()  # reason -> connections closed since the last log line
        self._logged_at = float("-inf")
        self._flush: asyncio.TimerHandle | None = None

    def protocol(self):
        """What uvicorn's ``http=`` setting takes: a factory of its own protocol, wrapped."""
        return functools.partial(_GuardedProtocol, self)

    def track(self, app):
        """The ASGI app, telling the guard when a connection's request is in the app (headers received)."""

        async def tracked(scope, receive, send):
            conn = self.open.get(_peer(scope.get("client"))) if scope["type"] == "http" else None
            if conn is not None:
                conn.busy()
            try:
                await app(scope, receive, send)
            finally:
                if conn is not None:
                    conn.waiting()

        return tracked

    def admit(self, conn: _GuardedProtocol) -> bool:
        if len(self.open) >= self.max_connections:
            idle = [c for c in self.open.values() if c.since is not None]
            if not idle:
                self.note(f"refused (all {self.max_connections} connections busy; max_connections)")
                return False
            oldest = min(idle, key=lambda c: c.since)
            self.note(f"closed to make room (max_connections {self.max_connections}): the oldest idle or still "
                      "sending its headers")
            oldest.close()
        self.open[conn.peer] = conn
        return True

    def forget(self, conn: _GuardedProtocol) -> None:
        if self.open.get(conn.peer) is conn:
            del self.open[conn.peer]

    def note(self, reason: str) -> None:
        """Count a closed connection; log at once if nothing was logged for a minute, else sum up later."""
        self.closed[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._log()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._logged_at + LOG_EVERY_S - now, self._log)

    def _log(self) -> None:
        self._flush = None
        if self.closed:
            parts = "; ".join(f"{n} {reason}" for reason, n in self.closed.items())
            log.warning("connections: %s (the next are summed up once a minute)", parts)
            self.closed.clear()
            self._logged_at = time.monotonic()


class _GuardedProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol, plus a deadline for each request's headers and the guard's connection count."""

    def __init__(self, guard: ConnectionGuard, **uvicorn_args):
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        self.guard, self.inner = guard, AutoHTTPProtocol(**uvicorn_args)
        self.loop = uvicorn_args.get("_loop") or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple | None = None
        self.since: float | None = None  # when it began waiting for a request's headers; None while one is in the app
        self.admitted = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport, self.peer = transport, _peer(transport.get_extra_info("peername"))
        if not self.guard.admit(self):
            transport.write(_BUSY)
            transport.close()
            return
        self.admitted = True
        self.waiting()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc) -> None:
        self._cancel_timer()
        self.guard.forget(self)
        if self.admitted:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def busy(self) -> None:
        self.since = None
        self._cancel_timer()

    def waiting(self) -> None:
        self.since = time.monotonic()
        self._cancel_timer()
        self._timer = self.loop.call_later(self.guard.header_timeout_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.since is not None and not self.transport.is_closing():
            self.guard.note(f"closed: sent no complete request headers within {self.guard.header_timeout_s:g} s "
                            "(header_timeout_s)")
            self.close()

    def close(self) -> None:
        self.guard.forget(self)
        self._cancel_timer()
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_BUSY_BODY = json.dumps({"error": {"message": "the server has too many connections open; retry shortly",
                                   "type": "server_busy", "param": None, "code": 503}}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
         b"retry-after: 1\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


def _peer(address) -> tuple | None:
    """(host, port) of a peer address: a socket's peername (IPv6 has 4 fields) or an ASGI scope's client."""
    return (str(address[0]), int(address[1])) if address else None


class RepeatFilter(logging.Filter):
    """Lets the first record with a given first line through, then one a minute that says how many like it
    were dropped. asyncio logs "socket.accept() out of system resource" for every connection it cannot
    accept when file handles run out: millions of lines in seconds."""

    def __init__(self, window_s: float = LOG_EVERY_S):
        super().__init__()
        self.window_s = window_s
        self.seen: dict[tuple, list] = {}  # key -> [time logged, dropped since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg).split("\n", 1)[0])
        now = time.monotonic()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return False
        dropped = entry[1] if entry else 0
        self.seen[key] = [now, 0]
        if dropped:
            record.msg = f"{record.msg}\n({dropped} more like it in the last {self.window_s:g} s were not logged)"
        return True


def connection_limit(requested: int) -> int:
    """``requested``, or less where the process's file handles would not suffice: half of those still free,
    since asyncio accepts a burst of connections before the guard sees them. Raises the soft limit on open
    files to the hard one first (many systems start processes at 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            soft = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return requested
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return max(1, min(requested, (soft - in_use - 16) // 2))


def make_server(app, settings, host: str, port: int, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` (from ``create_app``) under ``settings``' connection limits;
    ``.run()`` serves until interrupted."""
    import uvicorn

    max_connections = connection_limit(settings.max_connections)
    if max_connections < settings.max_connections:
        log.warning("max_connections lowered from %d to %d: the process may open too few files for more "
                    "(ulimit -n)", settings.max_connections, max_connections)
    guard = ConnectionGuard(max_connections, settings.header_timeout_s)
    config = uvicorn.Config(guard.track(app), host=host, port=port, log_level=log_level, http=guard.protocol(),
                            ws="none", lifespan="on", proxy_headers=False, timeout_keep_alive=settings.idle_timeout_s,
                            timeout_graceful_shutdown=10)
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())
    return uvicorn.Server(config)
