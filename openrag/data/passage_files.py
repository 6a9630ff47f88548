"""A file of passages (``openrag ask --passages FILE``), read into :class:`openrag.passage.Passage`.

JSON (a list, or an object with ``passages``/``ctxs``/``contexts``), JSON lines, or plain text with a blank
line between passages, by the file's suffix (.json, .jsonl, any other; in any case). Each item is read by
:func:`openrag.passage.read_passage`; a problem is reported with the file and the line or passage.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..passage import Passage, read_passage
from .readers import read_utf8

LIST_FIELDS = ("passages", "ctxs", "contexts")  # where a JSON object holds its list of passages


def read_passages(path: str | Path) -> list[Passage]:
    """The passages of ``path``; a file without one is an error too."""
    passages = _read_passages(Path(path))
    if not passages:
        raise ValueError(f"{path}: no passage in it (an empty file or list); give at least one passage, or drop "
                         "--passages to answer without evidence")
    return passages


def _read_passages(path: Path) -> list[Passage]:
    if not path.is_file():
        raise FileNotFoundError(f"no passages file at {path}")
    text = read_utf8(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        passages = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err.msg} at column {err.colno})") from None
                passages.append(read_passage(item, f"{path}:{number}"))
        return passages
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not JSON ({err.msg} at column {err.colno})") from None
        where = str(path)
        if isinstance(data, dict):
            key = next((k for k in LIST_FIELDS if k in data), None)
            if key is None:
                raise ValueError(f"{path}: a JSON object needs a 'passages' (or 'ctxs') list")
            data, where = data[key], f"{path}: field {key!r}"
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list of passages ({{title, text}} objects or strings), got {type(data).__name__}")
        return [read_passage(item, f"{where}: passage {i}") for i, item in enumerate(data, start=1)]
    return [Passage(text=block.strip()) for block in text.split("\n\n") if block.strip()]
