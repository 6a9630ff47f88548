"""What a command does to write an output: check that the path can be written, lock it, write it atomically.

The lock is ``fcntl.flock`` on a hidden file beside the output (``.NAME.lock``) that holds the holder's pid
and command, so that a second run to the same output stops at once and names the first. The kernel drops
the lock when its holder exits, however it exits, so a killed run never leaves a stale lock behind.

Every file openrag writes whole (a summary, a manifest, a data set, an index chunk) goes through
:func:`write_atomic`: readers see the old file or the new one, never part of either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Iterator


class OutputBusy(RuntimeError):
    """Another process is writing the same output."""


def check_output_path(path: str | Path, flag: str, folder: bool = False) -> Path:
    """``path`` as a Path, or ValueError saying why it cannot be written: a file where a folder is needed
    (the output itself or a folder above it), a folder where a file is, or a folder it may not write in."""
    text = str(path)
    path = Path(path).expanduser()
    if not folder and (text.endswith(os.sep) or path.is_dir()):
        raise ValueError(f"{flag} {text} is a folder; give a file name in it, e.g. {path / 'out.jsonl'}")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {text} is a file; give a folder name (a new one, or one this command wrote)")
    for above in path.parents:
        if above.exists():
            if not above.is_dir():
                raise ValueError(f"{flag} {text}: {above} is a file, not a folder; choose another {flag}")
            if not os.access(above, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {text}: no permission to write in {above}; choose another {flag}")
            break
    return path


def lock_path(output: str | Path) -> Path:
    output = Path(os.path.abspath(Path(output).expanduser()))  # "." and "dir/" have a name too
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def output_lock(output: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of ``output`` (a file or a folder) for the block, or raise :class:`OutputBusy` naming the
    process that holds it. The lock file is removed on release."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputBusy(f"{output} is being written by another run ({holder}); wait for it to finish, "
                             f"or write to another output") from None
        # A holder that released the lock may have removed the file after we opened it: lock the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "a process that has just started"
    return f"pid {info['pid']}, {info.get('command', 'openrag')}, since {info.get('since', '?')}"


@contextlib.contextmanager
def write_atomic(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file to write ``path`` through (text in UTF-8, or ``mode="wb"``): written beside it, then on a clean
    exit flushed, synced to disk and renamed over ``path`` in one step; on any error removed, ``path`` untouched.
    The folder is made if missing."""
    if mode not in ("w", "wb"):
        raise ValueError(f"write_atomic writes with mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # hidden, beside it, one per process
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(path: str | Path, data) -> None:
    """``data`` as indented JSON (UTF-8, non-ASCII kept), written atomically."""
    with write_atomic(path) as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows) -> int:
    """One JSON line per row, written atomically; the number of rows."""
    n = 0
    with write_atomic(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
