"""Adaptive-retrieval trade-off from one set of generations (the paper's accuracy vs retrieval frequency).

For each question the sweep run stores two answers: the one generated after a forced ``[No Retrieval]``
(with ``p_retrieve``, the token rule's P([Retrieval]) / (P([Retrieval]) + P([No Retrieval])) at the first
position, and ``minp``/``meanp``, the confidence rules' min and mean token probability of that answer) and
the one with retrieval. Every threshold's decision is then a pure function of those numbers:

    token rule:       retrieve if p_retrieve > threshold
    confidence rules: retrieve if minp (or meanp) < threshold

so a whole curve costs two generations per question, not one run per threshold. The decision is the
pipeline's own (:func:`openrag.answer.scoring.decide`, over the rule registry), so a threshold here means
what it means in ``openrag eval --threshold``. Beside the fixed grid, each
rule is also scored at the deciles of the values it actually produced (:func:`observed_thresholds`): a
model whose P([Retrieval]) shares all lie between 0.96 and 0.99 still draws a curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..answer.scoring import RULES, decide, get_rule
from .metrics import HEADLINE

DEFAULT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
OBSERVED_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SweepPoint:
    rule: str  # token | minp | meanp | no_retrieval | always_retrieve
    threshold: float | None
    n: int
    retrieval_frequency: float
    metrics: dict[str, float]  # mean of each per-question metric


def sweep_point(rule: str, threshold: float | None, records: Sequence[dict], choose) -> SweepPoint:
    """The mean metrics and retrieval frequency when question r is answered with retrieval iff ``choose(r)``."""
    n = len(records)
    keys = list(records[0]["metrics"]) if records else []
    sums = dict.fromkeys(keys, 0.0)
    retrieved = 0
    for r in records:
        use_retrieval = bool(choose(r))
        retrieved += use_retrieval and bool(r["retrieved"])  # a question with no evidence answered without it
        chosen = r["metrics"] if use_retrieval else r["no_retrieval"]["metrics"]
        for k in keys:
            sums[k] += chosen[k]
    return SweepPoint(rule, threshold, n, retrieved / n if n else 0.0, {k: v / n if n else 0.0 for k, v in sums.items()})


def observed_thresholds(records: Sequence[dict], rule: str, quantiles: Sequence[float] = OBSERVED_QUANTILES) -> list[float]:
    """The values of ``rule`` at the given quantiles of what the questions produced (rounded to 1e-4)."""
    values = sorted(v for r in records if (v := r["no_retrieval"].get(get_rule(rule).signal)) is not None)
    if not values:
        return []
    return sorted({round(values[min(len(values) - 1, int(q * len(values)))], 4) for q in quantiles})


def sweep(records: Sequence[dict], rules: Sequence[str] = RULES, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, observed: bool = True) -> list[SweepPoint]:
    """One point per (rule, threshold), plus the two ends: never and always retrieving. With ``observed``,
    each rule's thresholds also include the deciles of its own values."""
    missing = [r.get("id") for r in records if "no_retrieval" not in r]
    if missing:
        raise ValueError(f"{len(missing)} answers lack the no-retrieval generation a sweep needs (first id {missing[0]!r}); were they written by `openrag eval sweep`?")
    points = [sweep_point("no_retrieval", None, records, lambda r: False), sweep_point("always_retrieve", None, records, lambda r: True)]
    for rule in rules:
        key = get_rule(rule).signal
        grid = sorted(set(thresholds) | set(observed_thresholds(records, rule) if observed else ()))
        for t in grid:
            points.append(sweep_point(rule, t, records, lambda r, rule=rule, key=key, t=t: decide(rule, r["no_retrieval"].get(key), t)))
    return points


def sweep_table(points: Sequence[SweepPoint], metric: str) -> str:
    """A markdown table: rule, threshold, retrieval frequency and every metric, as percentages."""
    keys = list(points[0].metrics) if points else [HEADLINE[metric]]
    header = "| rule | threshold | retrieval % | " + " | ".join(keys) + " |"
    lines = [header, "|" + "---|" * (3 + len(keys))]
    for p in points:
        threshold = "" if p.threshold is None else f"{p.threshold:g}"
        values = " | ".join(f"{100 * p.metrics[k]:.1f}" for k in keys)
        lines.append(f"| {p.rule} | {threshold} | {100 * p.retrieval_frequency:.1f} | {values} |")
    return "\n".join(lines) + "\n"


def sweep_json(points: Sequence[SweepPoint]) -> list[dict]:
    return [asdict(p) for p in points]


def plot_sweep(points: Sequence[SweepPoint], metric: str, path: Path, title: str = "") -> Path:
    """PNG of the headline metric against retrieval frequency, one line per rule, thresholds labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = HEADLINE[metric]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for rule in [r for r in RULES if any(p.rule == r for p in points)]:
        pts = sorted((p for p in points if p.rule == rule), key=lambda p: (p.retrieval_frequency, p.threshold))
        xs = [100 * p.retrieval_frequency for p in pts]
        ys = [100 * p.metrics[headline] for p in pts]
        ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.2, label=f"{rule} rule")
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"{p.threshold:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, alpha=0.7)
    for p, marker in ((p, "s" if p.rule == "no_retrieval" else "^") for p in points if p.threshold is None):
        ax.scatter([100 * p.retrieval_frequency], [100 * p.metrics[headline]], marker=marker, color="black", zorder=3, label=p.rule.replace("_", " "))
    ax.set_xlabel("retrieval frequency (%)")
    ax.set_ylabel(f"{headline} (%)")
    ax.set_xlim(-3, 103)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
