"""The evaluation tasks of the paper: which metric each uses, how its prompt is built, where its data lives."""

from __future__ import annotations

from dataclasses import dataclass

BENCH = "shayekh/openrag_bench"


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # hotpotem | match | accuracy (metrics.score_answer)
    kind: str  # multihop | singlehop | closed: the prompt family of SPEC section 5
    closed: bool  # answers from a fixed label set: candidates' scores are summed per identical answer
    hub_config: str | None = None  # config of shayekh/openrag_bench that holds it, if any

    @property
    def default_dataset(self) -> str | None:
        return BENCH if self.hub_config else None


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("hotpotqa", "hotpotem", "multihop", False, "hotpotqa"),
        Task("2wikimultihopqa", "hotpotem", "multihop", False, "2wikimultihopqa"),
        Task("musique", "hotpotem", "multihop", False, "musique"),
        Task("popqa", "match", "singlehop", False),
        Task("triviaqa", "match", "singlehop", False),
        Task("pubhealth", "accuracy", "closed", True),
        Task("arc_c", "accuracy", "closed", True),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
