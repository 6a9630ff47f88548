"""The README's Layout table against the code: each part of openrag imports exactly the parts its line names,
only parts listed above it, and no module imports itself back through others (read from the source, not run)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "openrag"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@functools.cache
def imported(module: str) -> frozenset[str]:
    """The openrag modules ``module`` imports, at the top or inside functions (a package only where its own
    names are imported, not its submodules)."""
    path = MODULES[module]
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module
            subs = {f"{base}.{a.name}" for a in node.names} & set(MODULES)
            found.update(subs if len(subs) == len(node.names) else subs | {base})
    return frozenset(m for m in found if m in MODULES and m != module)


def part(module: str) -> str:
    """``openrag.eval.runner`` -> ``eval``; ``openrag.tasks`` -> ``tasks``."""
    return module.split(".")[1] if "." in module else "openrag"


def layout_table() -> list[tuple[list[str], set[str] | None]]:
    """(parts of a line, the parts it says it imports; None for "everything"), in the README's order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`openrag/"):
            continue
        where = [re.sub(r"\.py$", "", name.strip("/")).split("/")[-1] for name in re.findall(r"`([^`]+)`", cells[0])]
        imports = None if cells[2] == "everything" else set(re.findall(r"`([^`]+)`", cells[2]))
        rows.append((where, imports))
    return rows


def test_the_layout_table_names_every_import():
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        edges.setdefault(part(module), set()).update(part(m) for m in imported(module) if part(m) != part(module))
    rows = layout_table()
    listed = [name for where, _ in rows for name in where]
    assert set(listed) >= set(edges) - {"openrag", "__main__"}, "a part of openrag missing from the table"
    for position, (where, imports) in enumerate(rows):
        above = {name for w, _ in rows[:position] for name in w}
        for name in where:
            if imports is not None:
                assert edges.get(name, set()) == imports, (name, sorted(edges.get(name, set())))
            assert edges.get(name, set()) <= above | set(where), (name, "imports a part listed below it")


def test_no_module_imports_itself_back():
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in imported(todo.pop()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cyclic = [m for m in MODULES if reaches(m, m)]
    assert cyclic == []
