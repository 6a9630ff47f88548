"""Threshold sweep decisions from stored values, and the report's table and chart."""

from __future__ import annotations

import json
import re

import pytest

from openrag.eval.report import bar_chart, load_summaries, markdown_table
from openrag.eval.sweep import decide, plot_sweep, sweep, sweep_table


def record(em_retrieval, em_no, p, minp, meanp, retrieved=True):
    return {
        "id": "x",
        "retrieved": retrieved,
        "metrics": {"em": em_retrieval},
        "no_retrieval": {"prediction": "y", "p_retrieve": p, "minp": minp, "meanp": meanp, "metrics": {"em": em_no}},
    }


RECORDS = [
    record(1.0, 0.0, p=0.9, minp=0.1, meanp=0.5),  # needs retrieval; unsure without it
    record(0.0, 1.0, p=0.2, minp=0.8, meanp=0.9),  # knows the answer; retrieval misleads it
    record(1.0, 1.0, p=0.6, minp=0.4, meanp=0.7),
    record(0.0, 0.0, p=0.4, minp=None, meanp=None),  # empty no-retrieval answer: no probabilities
]


def test_decide_rules():
    assert decide("token", 0.6, 0.5) and not decide("token", 0.5, 0.5)  # strictly above
    assert decide("minp", 0.3, 0.5) and not decide("minp", 0.5, 0.5)  # strictly below
    assert decide("meanp", None, 0.0)
    with pytest.raises(ValueError, match="unknown retrieval rule"):
        decide("coin", 0.5, 0.5)


def test_sweep_points_by_hand():
    points = {(p.rule, p.threshold): p for p in sweep(RECORDS, thresholds=[0.0, 0.5, 1.0])}
    assert points[("no_retrieval", None)].metrics["em"] == 0.5
    assert points[("always_retrieve", None)].metrics["em"] == 0.5
    # token > 0.5 retrieves rows 0 and 2: em = 1 + 1 (row 1 without) + 1 + 0 = 3/4
    token = points[("token", 0.5)]
    assert (token.retrieval_frequency, token.metrics["em"]) == (0.5, 0.75)
    # minp < 0.5 retrieves rows 0, 2 and the row without probabilities
    minp = points[("minp", 0.5)]
    assert (minp.retrieval_frequency, minp.metrics["em"]) == (0.75, 0.75)
    # meanp < 0.0 retrieves only the row without probabilities
    assert points[("meanp", 0.0)].retrieval_frequency == 0.25
    assert points[("token", 1.0)].retrieval_frequency == 0.0


def test_a_question_without_evidence_counts_as_not_retrieving():
    # row 0 found no passage: its "retrieval" answer is its no-retrieval answer, and no retrieval happened
    rows = [record(0.0, 0.0, p=0.9, minp=0.1, meanp=0.5, retrieved=False)] + RECORDS[1:]
    points = {(p.rule, p.threshold): p for p in sweep(rows, thresholds=[0.5])}
    assert points[("always_retrieve", None)].retrieval_frequency == 0.75  # rows 1, 2 and 3 of 4
    assert points[("token", 0.5)].retrieval_frequency == 0.25  # rows 0 and 2 chosen; only row 2 retrieved


def test_sweep_needs_both_answers():
    with pytest.raises(ValueError, match="no-retrieval generation"):
        sweep([{"id": "a", "metrics": {"em": 1.0}}])


def test_sweep_table_and_plot(tmp_path):
    points = sweep(RECORDS, thresholds=[0.0, 0.5])
    table = sweep_table(points, "hotpotem")
    assert table.splitlines()[0] == "| rule | threshold | retrieval % | em |"
    assert "| token | 0.5 | 50.0 | 75.0 |" in table
    png = plot_sweep(points, "hotpotem", tmp_path / "sweep.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_table_and_chart(tmp_path):
    a = {"task": "hotpotqa", "mode": "adaptive_retrieval", "n": 10, "em": 0.5, "f1": 0.625, "retrieval_frequency": 0.3, "gold_recall": 0.8, "questions_per_second": 2.0}
    b = {"task": "popqa", "mode": "always_retrieve", "n": 5, "match": 0.4, "retrieval_frequency": 1.0, "questions_per_second": None}
    (tmp_path / "a.metrics.json").write_text(json.dumps(a))
    (tmp_path / "b.metrics.json").write_text(json.dumps(b))
    runs = load_summaries([tmp_path / "a.metrics.json", tmp_path / "b.metrics.json"])
    table = markdown_table(runs).splitlines()
    assert table[0] == "| run | task | mode | n | em | f1 | match | retrieval % | gold recall | q/s |"
    assert table[2] == "| a | hotpotqa | adaptive_retrieval | 10 | 50.0 | 62.5 |  | 30.0 | 80.0 | 2.00 |"
    assert table[3] == "| b | popqa | always_retrieve | 5 |  |  | 40.0 | 100.0 |  |  |"
    assert bar_chart(runs, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_other_files(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an `openrag eval` metrics file"):
        load_summaries([tmp_path / "x.json"])
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        load_summaries([tmp_path / "missing.metrics.json"])


def test_evaluate_sweep_writes_table_json_and_plot(tmp_path):
    from openrag.eval.evaluate import evaluate_sweep
    from openrag.eval.request import EvalRequest

    rows = [{"question": f"Q{i}?", "answers": [f"a{i}"], "ctxs": [{"title": "t", "text": f"a{i} is it"}]} for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def both_answers(req, both):
        assert both

        def answer(batch):
            # with retrieval right on even questions, without on odd ones; confidence falls with the index
            return [
                {
                    "prediction": f"a{q.index}" if q.index % 2 == 0 else "x",
                    "retrieved": True,
                    "no_retrieval": {"prediction": "x" if q.index % 2 == 0 else f"a{q.index}", "p_retrieve": q.index / 5, "minp": 1 - q.index / 5, "meanp": 1.0},
                }
                for q in batch
            ]

        return answer, {}

    req = EvalRequest(task="popqa", dataset=str(data), output_file=tmp_path / "s.jsonl", progress=False)
    summary, paths = evaluate_sweep(req, ["token", "minp"], [0.5], make_answerer=both_answers)
    assert summary["n"] == 6
    points = {(p["rule"], p["threshold"]): p for p in json.loads(paths["json"].read_text())}
    # token > 0.5 retrieves questions 3, 4, 5 (p = 0.6, 0.8, 1.0): right on 4 (retrieval), 1 (without) -> 2/6
    assert points[("token", 0.5)]["retrieval_frequency"] == 0.5
    assert points[("token", 0.5)]["metrics"]["match"] == pytest.approx(2 / 6)
    # minp < 0.5 retrieves the same three
    assert points[("minp", 0.5)]["metrics"]["match"] == pytest.approx(2 / 6)
    assert points[("always_retrieve", None)]["metrics"]["match"] == 0.5
    assert "| token | 0.5 | 50.0 |" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000


def test_report_names_the_file_and_field_it_cannot_read(tmp_path, capsys):
    from openrag.cli import main

    (tmp_path / "bytes.metrics.json").write_bytes(b"\xff\xfe{}")
    (tmp_path / "text.metrics.json").write_text(json.dumps({"n": 3, "em": "0.5"}))
    (tmp_path / "nested.metrics.json").write_text(json.dumps({"n": 3, "f1": {"mean": 0.5}}))
    (tmp_path / "flag.metrics.json").write_text(json.dumps({"n": 3, "em": True}))
    for name, said in [("bytes", "not UTF-8"), ("text", "'em'"), ("nested", "'f1'"), ("flag", "'em'")]:
        path = tmp_path / f"{name}.metrics.json"
        with pytest.raises(SystemExit) as done:
            main(["report", str(path)])
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.startswith(f"openrag report: error: {path}") and said in err, err


def test_report_checks_its_output_paths_before_writing(tmp_path, capsys):
    from openrag.cli import main

    metrics = tmp_path / "a.metrics.json"
    metrics.write_text(json.dumps({"n": 3, "em": 0.5}))
    for flag in ("--output", "--plot"):
        target = metrics / "table.out"  # under a file: no folder can be made there
        with pytest.raises(SystemExit) as done:
            main(["report", str(metrics), flag, str(target)])
        err = capsys.readouterr().err
        assert done.value.code == 2 and err == f"openrag report: error: {flag} {target}: {metrics} is a file, not a folder; choose another {flag}\n"
    with pytest.raises(SystemExit) as done:
        main(["report", str(metrics), "--plot", str(tmp_path / "chart.xyz")])
    out, err = capsys.readouterr()
    assert done.value.code == 2 and out == "" and "--plot" in err and ".png, .svg, .pdf" in err


@pytest.mark.parametrize("field, value", [("em", "NaN"), ("f1", "Infinity"), ("retrieval_frequency", "-Infinity"), ("n", "NaN")])
def test_report_refuses_non_finite_metrics_naming_file_and_field(tmp_path, capsys, field, value):
    """Python reads JSON's NaN and Infinity; a table cell "nan" and a bar left out of the chart hid them (issue 31)."""
    from openrag.cli import main

    path = tmp_path / "broken.metrics.json"
    path.write_text(json.dumps({"n": 3, "em": 0.5, "f1": 0.6, "retrieval_frequency": 0.2}).replace("}", f', "{field}": {value}}}'))
    with pytest.raises(SystemExit) as done:
        main(["report", str(path), "--plot", str(tmp_path / "chart.png")])
    out, err = capsys.readouterr()
    assert done.value.code == 2 and out == "" and not (tmp_path / "chart.png").exists()
    assert err.startswith(f"openrag report: error: {path}: '{field}' is ") and "not a finite number" in err, err


def test_report_table_cells_cannot_add_columns_or_rows(tmp_path):
    """A run name, task or mode holding | or a line break stays in its cell (issue 31)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    path = folder / "a|b\n| injected | row |.metrics.json"
    path.write_text(json.dumps({"task": "hotpot|qa", "mode": "x\n|---|\n| fake |", "n": 2, "em": 0.5}))
    table = markdown_table(load_summaries([path])).splitlines()
    assert len(table) == 3, table  # header, rule, one run
    assert table[2] == r"| a\|b \| injected \| row \| | hotpot\|qa | x \|---\| \| fake \| | 2 | 50.0 |  |  |  |"
    cells = re.split(r"(?<!\\)\|", table[2])  # where a markdown reader splits the row: unescaped bars
    assert len(cells) == len(re.split(r"(?<!\\)\|", table[0]))
    path.write_text(json.dumps({"task": "t\\", "mode": "m", "n": 1}))
    row = markdown_table(load_summaries([path])).splitlines()[2]
    assert r"| t\\ | m |" in row  # the backslash escaped: it cannot escape the bar after it
