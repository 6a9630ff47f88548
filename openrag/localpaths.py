"""The one rule that tells a local path from a Hugging Face hub name, for every argument that takes either
(checkpoints, encoders, rerankers, datasets).

A name is local when it starts like a path (``./``, ``../``, ``/``, ``~``) or when its first folder exists here:
``tr/nope_model`` with a folder ``tr/`` beside you is a mistyped checkpoint, not the hub repository ``tr/nope_model``.
A local name that names nothing is an error, never a hub request (which would fail later, offline, or fetch
someone else's model).
"""

from __future__ import annotations

from pathlib import Path


def looks_local(name: str) -> bool:
    """A path rather than a hub name: it starts like one, or its first folder is here."""
    if name.startswith((".", "/", "~")):
        return True
    return "/" in name and Path(name.split("/", 1)[0]).exists()


def is_hub_name(name: str) -> bool:
    """``owner/name`` that is no local path: what may be looked up on the hub."""
    return name.count("/") == 1 and not looks_local(name) and not Path(name).exists()


def check_local_or_hub(name: str, what: str) -> None:
    """Nothing when ``name`` exists here or may be a hub name; else FileNotFoundError saying which of the two
    it is not (``what``: what it should be, e.g. "checkpoint folder")."""
    if Path(name).expanduser().exists() or is_hub_name(name):
        return
    if looks_local(name):
        raise FileNotFoundError(f"no {what} at {name}: no such file or folder (a local path, never looked up on the hub)")
    raise FileNotFoundError(f"no {what} at {name}, and it is not a hub name (owner/name)")
