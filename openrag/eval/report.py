"""``openrag report``: several metrics files side by side, as one markdown table and one bar chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..jsonfiles import read_json_object
from .metrics import SCORES

# Score columns: metrics.SCORES, in its order; only those some run reports are shown.
CHART_COLUMNS = ("em", "f1", "match", "accuracy")
NUMBER_FIELDS = (*SCORES, "retrieval_frequency", "gold_recall", "questions_per_second")  # or null
NOT_METRICS = "not an `openrag eval` metrics file: pass the .metrics.json that `openrag eval` wrote"


def load_summaries(paths: Sequence[Path]) -> list[tuple[str, dict]]:
    """(run name, summary) per metrics file; the name is the file name without ``.metrics.json``."""
    runs = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no metrics file at {path}; pass the .metrics.json that `openrag eval` wrote")
        summary = read_json_object(path, NOT_METRICS)
        if "n" not in summary:
            raise ValueError(f"{path}: no 'n' field; {NOT_METRICS}")
        for key in ("n", *NUMBER_FIELDS):
            _check_number(path, key, summary.get(key))
        name = path.name[: -len(".metrics.json")] if path.name.endswith(".metrics.json") else path.stem
        runs.append((name, summary))
    return runs


def _check_number(path: Path, key: str, value) -> None:
    """A field the report shows is a finite number or null; JSON's NaN and Infinity (which Python reads) are not."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {key!r} is {value!r}, not a number; {NOT_METRICS}")
    if not math.isfinite(value):
        raise ValueError(f"{path}: {key!r} is {value!r}, not a finite number; the run that wrote it went wrong: "
                         "rerun it (`openrag eval ... --overwrite`) or leave this file out")


def cell(text: str) -> str:
    """Text as one markdown table cell: ``|`` and ``\\`` escaped, line breaks as spaces, so no name adds a column or a row."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").splitlines())


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def markdown_table(runs: Sequence[tuple[str, dict]]) -> str:
    scores = [c for c in SCORES if any(c in s for _, s in runs)]
    header = ["run", "task", "mode", "n", *scores, "retrieval %", "gold recall", "q/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in runs:
        qps = s.get("questions_per_second")
        row = [cell(name), cell(s.get("task", "")), cell(s.get("mode", "")), str(s["n"])]
        row += [_pct(s.get(c)) for c in scores]
        row += [_pct(s.get("retrieval_frequency")), _pct(s.get("gold_recall")), "" if qps is None else f"{qps:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(runs: Sequence[tuple[str, dict]], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Grouped bars, per run: each headline score some run reports, and the retrieval frequency (percent).
    A score a run does not report gets no bar (not a bar at 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(columns or [c for c in CHART_COLUMNS if any(c in s for _, s in runs)])
    columns.append("retrieval_frequency")
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(runs) * len(columns)), 4.4), dpi=120)
    for j, column in enumerate(columns):
        pairs = [(i + (j - (len(columns) - 1) / 2) * width, 100 * s[column]) for i, (_, s) in enumerate(runs) if s.get(column) is not None]
        if pairs:
            bars = ax.bar([x for x, _ in pairs], [y for _, y in pairs], width, label=column.replace("_", " "))
            ax.bar_label(bars, fmt="%.1f", fontsize=6)
    many = len(runs) > 3
    ax.set_xticks(range(len(runs)), [name for name, _ in runs], rotation=20 if many else 0, ha="right" if many else "center", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, ncol=len(columns), loc="upper center")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
