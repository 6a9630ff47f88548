"""Command-line flags from a dataclass's fields: the one way a declared setting becomes a flag.

A field ``name`` becomes ``--name``, of the field's type (a bool is ``--name``/``--no-name``), with the
``help``, ``choices`` and ``metavar`` of its metadata. ``AnswerOptions``, ``BackendOptions``, ``EvalRequest`` and
``ServeSettings`` build their flags here, so that a new setting is one field. This module imports nothing of openrag.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field
from pathlib import Path

_KINDS = {"bool": bool, "int": int, "float": float, "str": str, "Path": Path}


def flag_metadata(group: str, help: str, **more) -> dict:
    """A field's metadata that makes it a flag in the argument group ``group`` (``more``: choices, metavar)."""
    return {"group": group, "help": help, **more}


def field_kind(f: Field) -> type:
    """bool, int, float, str or Path: the Python type of a field's values, None aside (``str | None`` -> str)."""
    names = [part.strip() for part in str(f.type).split("|") if part.strip() != "None"]
    if len(names) != 1 or names[0] not in _KINDS:
        raise TypeError(f"field {f.name}: a flag needs one of {', '.join(_KINDS)} (or it | None), not {f.type}")
    return _KINDS[names[0]]


def field_default(f: Field):
    """The field's default value; None for a field without one."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def add_field_flags(group, fields: Iterable[Field], defaults: Mapping[str, object] | None = None,
                    choices: Mapping[str, tuple] | None = None) -> None:
    """One flag per field on ``group`` (a parser or an argument group). ``defaults`` and ``choices`` replace
    those of the fields they name (a command's own default; a choice the flag takes beyond the field's values)."""
    defaults, choices = defaults or {}, choices or {}
    for f in fields:
        kw = {"default": defaults.get(f.name, field_default(f)), "help": f.metadata["help"]}
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        kind = field_kind(f)
        if kind is bool:
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(f"--{f.name}", type=str if kind is Path else kind,
                               choices=choices.get(f.name, f.metadata.get("choices")), **kw)
