"""What a dataset is, for a run that resumes over it: not the path as typed (``dev.jsonl`` from another folder is
another file; ``./dev.jsonl`` and ``data/../dev.jsonl`` are the same one) but the file it resolves to and what
it holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .readers import split_window


def dataset_identity(spec: str) -> dict:
    """``{"dataset": resolved path (with its row window), "dataset_fingerprint": {"bytes", "sha256"}}`` of a local
    file; ``{"dataset": spec}`` of a hub name (the hub versions its datasets)."""
    path, _, _ = split_window(spec)
    local = Path(path).expanduser()
    if not local.is_file():
        return {"dataset": spec}
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return {"dataset": str(local.resolve()) + spec[len(path):],
            "dataset_fingerprint": {"bytes": local.stat().st_size, "sha256": digest.hexdigest()}}
