"""Reading the JSON files openrag itself writes (index manifests, build records, metrics files), so that a
damaged one is reported by path and line with what to do, instead of as a bare decoder message."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: Path, fix: str) -> dict:
    """The JSON object in ``path``; ValueError naming the file, the line and ``fix`` when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); {fix}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, expected an object; {fix}")
    return data
