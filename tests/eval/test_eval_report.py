"""Reports: one run's PNG figures, and compare.md + the combined alignment-uniformity plane, from
small fake run directories (every input file optional)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from fmicl_engine.eval.report import (
    RunRecord,
    compare_runs,
    markdown_table,
    read_jsonl,
    run_row,
    series,
    write_run_figures,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CONFIG = """[model]
arch = "digits_cnn"

[loss]
name = "{name}"
{extra}
"""


def write_jsonl(path: Path, records, *, cut_last_line: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if cut_last_line:
        text += '{"step": 99, "lo'
    path.write_text(text)


def fake_run(root: Path, name: str, *, divergence="kl", knn=0.8, with_eval=True, with_epochs=True,
             with_results=True, epochs=4) -> Path:
    run = root / name
    run.mkdir(parents=True)
    write_jsonl(run / "metrics.jsonl",
                [{"step": 10 * (i + 1), "epoch": i // 2, "loss": 1.0 / (i + 1), "lr": 0.01, "images_per_s": 1000.0 + i,
                  "data_wait_fraction": 0.01} for i in range(2 * epochs)], cut_last_line=True)
    if with_epochs:
        write_jsonl(run / "epochs.jsonl",
                    [{"epoch": e, "step": 20 * (e + 1), "loss": 1.0 / (e + 1), "online_probe_top1": 0.2 + 0.05 * e,
                      "alignment": 1.2 - 0.05 * e, "uniformity": -1.0 - 0.2 * e} for e in range(epochs)])
    if with_eval:
        (run / "eval.json").write_text(json.dumps({
            "knn_top1": knn, "knn_top5": 0.97, "linear_top1": 0.85, "linear_top5": 0.99,
            "alignment": 0.55, "uniformity": -2.3, "protocol": {"knn": "k=200, T=0.1"},
            "similarity_histograms": {"bins": [-1.0 + 0.25 * i for i in range(9)],
                                      "positive": [0, 0, 0, 0, 1, 3, 10, 30],
                                      "negative": [5, 40, 90, 120, 80, 30, 4, 1]},
        }))
    if with_results:
        (run / "results.json").write_text(json.dumps({
            "objective": {"name": "fmicl", "divergence": divergence, "similarity": "gaussian", "sigma": 1.0},
            "images_per_s": 1062.0, "linear_probe_top1": 0.9276}))
    (run / "config.toml").write_text(CONFIG.format(name="fmicl", extra=f'divergence = "{divergence}"'))
    return run


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_a_complete_run_gets_every_figure(tmp_path):
    run = fake_run(tmp_path, "digits_kl")
    notes = []
    paths = write_run_figures(run, log=notes.append)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "alignment_uniformity.png",
                                       "similarity_histograms.png"]
    assert all(p.parent == run / "figures" for p in paths) and notes == []
    for path in paths:
        assert_png(path)
    assert not list((run / "figures").glob("*.tmp"))


def test_missing_inputs_skip_their_figure_with_a_note(tmp_path):
    run = fake_run(tmp_path, "bare", with_eval=False, with_epochs=False, with_results=False)
    notes = []
    paths = write_run_figures(run, tmp_path / "out", log=notes.append)
    assert [p.name for p in paths] == ["loss.png"]
    assert_png(tmp_path / "out" / "loss.png")
    assert len(notes) == 3 and any("similarity histograms skipped" in n for n in notes)
    assert any("alignment-uniformity plane skipped" in n for n in notes)

    # a malformed histogram (counts of the wrong length) is a note too, not an exception
    (run / "eval.json").write_text(json.dumps({"similarity_histograms": {"bins": [0, 1], "positive": [1, 2, 3]},
                                               "alignment": 0.5, "uniformity": None}))
    notes.clear()
    paths = write_run_figures(run, log=notes.append)
    assert [p.name for p in paths] == ["loss.png"] and any("increasing bins" in n for n in notes)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_run_figures(empty, log=None) == []
    with pytest.raises(FileNotFoundError):
        write_run_figures(tmp_path / "nowhere", log=None)


def test_histogram_bins_may_be_centres_and_eval_alone_gives_a_plane_point(tmp_path):
    run = tmp_path / "eval_only"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({
        "knn_top1": 0.5, "alignment": 0.7, "uniformity": -1.5,
        "similarity_histograms": {"bins": [0.1, 0.3, 0.5], "positive": [1, 2, 3], "negative": [3, 2, 1]}}))
    paths = write_run_figures(run, log=None)
    assert [p.name for p in paths] == ["accuracy.png", "alignment_uniformity.png", "similarity_histograms.png"]
    for path in paths:
        assert_png(path)


def test_jsonl_reading_skips_a_cut_line_and_later_steps_win(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "loss": 3}\n\n{"step": 2, "loss": 2}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert len(read_jsonl(path)) == 3 and read_jsonl(tmp_path / "none.jsonl") == []
    assert series(read_jsonl(path), "step", "loss") == ([1.0, 2.0], [3.0, 1.5])


def test_compare_writes_one_table_and_the_combined_plane(tmp_path):
    runs = [fake_run(tmp_path, "digits_kl", knn=0.8123),
            fake_run(tmp_path, "digits_js", divergence="js", knn=0.7, with_eval=False),
            fake_run(tmp_path, "bare", with_eval=False, with_epochs=False, with_results=False)]
    (runs[2] / "config.toml").write_text(CONFIG.format(name="infonce", extra="tau = 0.5"))
    rows = compare_runs(runs, tmp_path / "cmp", log=None)

    assert [r["run"] for r in rows] == ["digits_kl", "digits_js", "bare"]
    assert [r["objective"] for r in rows] == ["fmicl (kl, gaussian)", "fmicl (js, gaussian)", "infonce"]
    assert rows[0]["knn_top1"] == pytest.approx(0.8123) and rows[0]["images_per_s"] == 1062.0
    assert rows[1]["knn_top1"] is None and rows[1]["alignment"] == pytest.approx(1.2 - 0.15)  # last epoch
    assert rows[2]["images_per_s"] == pytest.approx(1003.5)  # mean of metrics.jsonl's windows

    text = (tmp_path / "cmp" / "compare.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one row per run
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["run", "objective", "kNN top-1 (%)", "kNN top-5 (%)", "linear top-1 (%)", "linear top-5 (%)",
                      "alignment ↓", "uniformity ↓", "images/s"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert cells[0] == ["digits_kl", "fmicl (kl, gaussian)", "81.2", "97.0", "85.0", "99.0", "0.550", "-2.300", "1,062"]
    assert cells[1][:4] == ["digits_js", "fmicl (js, gaussian)", "—", "—"]
    assert cells[1][4] == "92.8†" and cells[1][6] == "1.050‡" and cells[1][8] == "1,062"
    assert cells[2] == ["bare", "infonce", "—", "—", "—", "—", "—", "—", "1,004§"]
    assert "† results.json's linear_probe_top1" in text and "‡ the last line of epochs.jsonl" in text
    assert "![alignment-uniformity plane" in text
    assert_png(tmp_path / "cmp" / "alignment_uniformity.png")


def test_compare_names_runs_uniquely_and_notes_a_missing_plane(tmp_path):
    a = fake_run(tmp_path / "seed0", "digits_kl", with_eval=False, with_epochs=False)
    b = fake_run(tmp_path / "seed1", "digits_kl", with_eval=False, with_epochs=False)
    notes = []
    rows = compare_runs([a, b], tmp_path / "cmp", log=notes.append)
    assert [r["run"] for r in rows] == ["seed0/digits_kl", "seed1/digits_kl"]
    c = fake_run(tmp_path, "digits_js", with_eval=False, with_epochs=False)
    assert [r["run"] for r in compare_runs([a, c, b], tmp_path / "cmp", log=None)] == \
        ["seed0/digits_kl", "digits_js", "seed1/digits_kl"]  # only names that clash get their parents
    assert not (tmp_path / "cmp" / "alignment_uniformity.png").exists()
    assert "no alignment-uniformity figure" in (tmp_path / "cmp" / "compare.md").read_text() and len(notes) == 1
    with pytest.raises(FileNotFoundError):
        compare_runs([tmp_path / "nowhere"], tmp_path / "cmp")


def test_table_cells_escape_pipes_and_show_missing_values():
    row = run_row(RunRecord("/nonexistent/run|x"))
    assert row["objective"] is None and row["knn_top1"] is None
    line = markdown_table([row]).splitlines()[2]
    assert "run\\|x" in line and line.count("—") == 8
