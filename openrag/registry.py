"""Looking a name up in one of openrag's registries (tasks, index kinds, rules, backends, rankers, ...).

Every registry answers a bad name the same way: the kind of thing, the name given, and the names it knows.
This module imports nothing of openrag, so any module may use it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TypeVar

T = TypeVar("T")


def unknown(what: str, name: object, choices: Collection[str]) -> ValueError:
    """The error for ``name`` (one name, or a list of them) that is not among ``choices``."""
    return ValueError(f"unknown {what} {name!r}; choose one of {', '.join(choices)}")


def check_choice(choices: Collection[str], name: str, what: str) -> str:
    """``name`` if it is one of ``choices``; else :func:`unknown`'s error."""
    if name not in choices:
        raise unknown(what, name, choices)
    return name


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """The entry of ``registry`` called ``name``; else :func:`unknown`'s error."""
    return registry[check_choice(registry, name, what)]
