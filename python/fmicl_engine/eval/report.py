"""Reports: PNG figures of one run, and a Markdown table + combined figure comparing runs.

Reads what a run directory holds (each file is optional; a figure whose inputs are missing is
skipped with a note, never an error):

``metrics.jsonl``  one line per ``train.log_every`` steps: ``step``, ``epoch``, ``loss``, ``images_per_s``, ...
``epochs.jsonl``   one line per epoch: ``epoch``, ``step``, ``loss``, ``online_probe_top1``, ``alignment``,
                   ``uniformity``
``eval.json``      the end-of-run evaluation: ``knn_top1/5``, ``linear_top1/5``, ``alignment``, ``uniformity``,
                   ``similarity_histograms`` {``bins``, ``positive``, ``negative``}
``results.json``   the run's summary: ``objective``, ``images_per_s``, and the digits' ``linear_probe_top1``
``config.toml``    the resolved config (the objective when results.json is missing)

Accuracies are fractions in [0, 1], as the engine writes them; figures and tables show percent.
Alignment (alpha = 2) and uniformity (t = 2) are Wang and Isola's: lower is better for both.

Figures are drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``, never pyplot), so
nothing needs a display and the process's pyplot backend is left as the user set it. A
truncated last line of a jsonl file (a run killed mid-write) is skipped; when a resumed run
logged a step twice, the later line wins.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fmicl_engine.atomic_files import write_atomically, write_text_atomically

MISSING = "—"

# (row key, column header) of compare.md, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run", "run"),
    ("objective", "objective"),
    ("knn_top1", "kNN top-1 (%)"),
    ("knn_top5", "kNN top-5 (%)"),
    ("linear_top1", "linear top-1 (%)"),
    ("linear_top5", "linear top-5 (%)"),
    ("alignment", "alignment ↓"),
    ("uniformity", "uniformity ↓"),
    ("images_per_s", "images/s"),
)
_PERCENT = {"knn_top1", "knn_top5", "linear_top1", "linear_top5"}
_GEOMETRY = {"alignment", "uniformity"}

ALIGNMENT_LABEL = r"alignment $\mathcal{L}_{align}$ ($\alpha$=2)  ← lower is better"
UNIFORMITY_LABEL = r"uniformity $\mathcal{L}_{uniform}$ (t=2)  ← lower is better"

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- reading


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, null, a string, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a jsonl file, [] if it does not exist; blank lines and lines that do
    not parse (a run killed mid-write leaves its last line cut short) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object file, {} if it is missing or not a JSON object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def series(records: Iterable[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the records holding numbers under both keys, sorted by x; for a repeated x (a
    resumed run logs the steps after its checkpoint again) the later record wins."""
    points: dict[float, float] = {}
    for record in records:
        xv, yv = _number(record.get(x)), _number(record.get(y))
        if xv is not None and yv is not None:
            points[xv] = yv
    xs = sorted(points)
    return xs, [points[v] for v in xs]


class RunRecord:
    """Everything a run directory holds that the reports use, read once."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.metrics = read_jsonl(self.dir / "metrics.jsonl")
        self.epochs = read_jsonl(self.dir / "epochs.jsonl")
        self.eval = read_json(self.dir / "eval.json")
        self.results = read_json(self.dir / "results.json")
        self.config = self._read_config()

    def _read_config(self) -> dict[str, Any]:
        try:
            return tomllib.loads((self.dir / "config.toml").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @property
    def name(self) -> str:
        return self.dir.resolve().name or str(self.dir)

    def objective(self) -> str | None:
        """The loss name, with its divergence and similarity where it has them: "fmicl (kl, gaussian)"."""
        table = self.results.get("objective")
        if not isinstance(table, dict):
            table = self.config.get("loss")
        if not isinstance(table, dict) or not table.get("name"):
            return None
        details = [str(table[k]) for k in ("divergence", "similarity") if table.get(k) not in (None, "")]
        return f"{table['name']} ({', '.join(details)})" if details else str(table["name"])

    def geometry_path(self) -> tuple[list[float], list[float], list[float]]:
        """(epochs, alignment, uniformity) of the epochs holding both figures."""
        points: dict[float, tuple[float, float]] = {}
        for index, record in enumerate(self.epochs):
            epoch = _number(record.get("epoch"))
            a, u = _number(record.get("alignment")), _number(record.get("uniformity"))
            if a is not None and u is not None:
                points[epoch if epoch is not None else float(index)] = (a, u)
        epochs = sorted(points)
        return epochs, [points[e][0] for e in epochs], [points[e][1] for e in epochs]

    def last_epoch(self) -> float | None:
        epochs = [e for e in (_number(r.get("epoch")) for r in self.epochs) if e is not None]
        if epochs:
            return max(epochs)
        return _number(self.results.get("epochs"))


# ---------------------------------------------------------------------------------------------- drawing


def _figure(width: float = 6.4, height: float = 4.4):
    """A matplotlib Figure on an Agg canvas (imported here: reading runs needs no matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: figure.savefig(f, format="png"))
    return path


def _label_plane(ax, title: str) -> None:
    ax.set_title(f"{title}\nlower-left is better (tighter positives, more uniform spread)", fontsize=10)
    ax.set_xlabel(ALIGNMENT_LABEL)
    ax.set_ylabel(UNIFORMITY_LABEL)
    ax.grid(True, alpha=0.3)


def _draw_geometry_path(ax, epochs, alignment, uniformity, *, color, label: str, colour_by_epoch: bool = False):
    """One run's path through the plane: joined points, a circle at its start, a star at its end."""
    ax.plot(alignment, uniformity, "-", color=color, alpha=0.6, linewidth=1.2, label=label)
    if colour_by_epoch and len(epochs) > 1:
        points = ax.scatter(alignment, uniformity, c=epochs, cmap="viridis", s=22, zorder=3)
        ax.figure.colorbar(points, ax=ax, label="epoch")
    else:
        ax.scatter(alignment, uniformity, color=color, s=14, zorder=3)
    start_label = f"start (epoch {epochs[0]:g})" if colour_by_epoch else None
    end_label = f"end (epoch {epochs[-1]:g})" if colour_by_epoch else None
    ax.scatter(alignment[:1], uniformity[:1], marker="o", s=90, facecolors="none", edgecolors="black",
               linewidths=1.4, zorder=4, label=start_label)
    ax.scatter(alignment[-1:], uniformity[-1:], marker="*", s=170, color=color, edgecolors="black",
               linewidths=0.8, zorder=5, label=end_label)


def _loss_figure(run: RunRecord, path: Path, notes: list[str]) -> Path | None:
    steps, losses = series(run.metrics, "step", "loss")
    if not steps:
        notes.append(f"{run.dir}: loss curve skipped: no metrics.jsonl lines with step and loss")
        return None
    figure = _figure()
    ax = figure.add_subplot()
    ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="training loss (per log window)")
    epoch_steps, epoch_losses = series(run.epochs, "step", "loss")
    if epoch_steps:
        ax.plot(epoch_steps, epoch_losses, "o", color="tab:orange", markersize=3.5, label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    objective = run.objective()
    ax.set_title(f"{run.name}: training loss" + (f" — {objective}" if objective else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


def _final_accuracies(run: RunRecord) -> list[tuple[str, float, str]]:
    """(label, accuracy, marker) of the end-of-run figures."""
    found = []
    for key, label, marker in (("knn_top1", "kNN top-1", "s"), ("knn_top5", "kNN top-5", "D"),
                               ("linear_top1", "linear top-1", "^"), ("linear_top5", "linear top-5", "v")):
        value = _number(run.eval.get(key))
        if value is not None:
            found.append((label + " (eval.json)", value, marker))
    probe = _number(run.results.get("linear_probe_top1"))
    if probe is not None and _number(run.eval.get("linear_top1")) is None:
        found.append(("linear probe top-1 (results.json)", probe, "P"))
    return found


def _accuracy_figure(run: RunRecord, path: Path, notes: list[str]) -> Path | None:
    epochs, online = series(run.epochs, "epoch", "online_probe_top1")
    finals = _final_accuracies(run)
    if not epochs and not finals:
        notes.append(f"{run.dir}: accuracy curve skipped: no online_probe_top1 in epochs.jsonl and no accuracy "
                     "in eval.json or results.json")
        return None
    figure = _figure()
    ax = figure.add_subplot()
    if epochs:
        ax.plot(epochs, [100 * v for v in online], "-o", markersize=3, color="tab:blue",
                label="online linear probe top-1 (detached features)")
    end = run.last_epoch()
    end = end if end is not None else 0.0
    for label, value, marker in finals:
        ax.plot([end], [100 * value], marker, markersize=8, linestyle="none", label=f"{label}: {100 * value:.1f}%")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{run.name}: accuracy", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(figure, path)


def _geometry_figure(run: RunRecord, path: Path, notes: list[str]) -> Path | None:
    epochs, alignment, uniformity = run.geometry_path()
    final = (_number(run.eval.get("alignment")), _number(run.eval.get("uniformity")))
    has_final = None not in final
    if not epochs and not has_final:
        notes.append(f"{run.dir}: alignment-uniformity plane skipped: no alignment and uniformity in "
                     "epochs.jsonl or eval.json")
        return None
    figure = _figure(6.4, 5.0)
    ax = figure.add_subplot()
    if epochs:
        _draw_geometry_path(ax, epochs, alignment, uniformity, color="tab:blue", label="per epoch",
                            colour_by_epoch=True)
    if has_final:
        ax.scatter([final[0]], [final[1]], marker="X", s=110, color="tab:red", zorder=6,
                   label=f"eval.json ({final[0]:.3f}, {final[1]:.3f})")
    _label_plane(ax, f"{run.name}: alignment and uniformity, one point per epoch")
    ax.legend(fontsize=8, loc="best")
    return _save(figure, path)


def _histogram_edges(bins: Sequence[float], n: int) -> list[float] | None:
    """Bin edges from ``bins``: n + 1 edges as given, or n centres (edges halfway between them)."""
    if len(bins) == n + 1:
        return list(bins)
    if len(bins) == n and n >= 2:
        mids = [(a + b) / 2 for a, b in zip(bins[:-1], bins[1:])]
        return [2 * bins[0] - mids[0], *mids, 2 * bins[-1] - mids[-1]]
    return None


def _histogram_figure(run: RunRecord, path: Path, notes: list[str]) -> Path | None:
    histograms = run.eval.get("similarity_histograms")
    if not isinstance(histograms, dict):
        notes.append(f"{run.dir}: similarity histograms skipped: no similarity_histograms in eval.json")
        return None
    bins = [_number(v) for v in histograms.get("bins") or []]
    counts = {kind: [_number(v) for v in histograms.get(kind) or []] for kind in ("positive", "negative")}
    counts = {kind: c for kind, c in counts.items() if c and None not in c}
    edges = None
    if counts and None not in bins:
        lengths = {len(c) for c in counts.values()}
        edges = _histogram_edges(bins, lengths.pop()) if len(lengths) == 1 else None
    if edges is None or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        notes.append(f"{run.dir}: similarity histograms skipped: eval.json's similarity_histograms needs "
                     "increasing bins (edges, or centres) and positive/negative counts of matching length")
        return None
    figure = _figure()
    ax = figure.add_subplot()
    colours = {"positive": "tab:green", "negative": "tab:red"}
    for kind, values in counts.items():
        total = sum(values)
        if total <= 0:
            continue
        ax.stairs([v / total for v in values], edges, fill=True, alpha=0.35, color=colours[kind])
        ax.stairs([v / total for v in values], edges, color=colours[kind], linewidth=1.4,
                  label=f"{kind} pairs ({total:,.0f})")
    ax.set_xlabel("similarity")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(f"{run.name}: similarity of positive and negative pairs", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


FIGURES = (
    ("loss.png", _loss_figure),
    ("accuracy.png", _accuracy_figure),
    ("alignment_uniformity.png", _geometry_figure),
    ("similarity_histograms.png", _histogram_figure),
)


def write_run_figures(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                      log: Log | None = _stderr) -> list[Path]:
    """Draw one run's figures into ``out_dir`` (default ``run_dir/figures``) and return their paths:
    ``loss.png`` (metrics.jsonl), ``accuracy.png`` (epochs.jsonl's online probe and eval.json's
    final kNN / linear figures), ``alignment_uniformity.png`` (one point per epoch, joined, start
    and end marked) and ``similarity_histograms.png`` (eval.json). A figure without its inputs is
    skipped and ``log`` (None: silent) says so."""
    run = RunRecord(run_dir)
    if not run.dir.is_dir():
        raise FileNotFoundError(f"{run.dir}: no such run directory")
    out = Path(out_dir) if out_dir is not None else run.dir / "figures"
    notes: list[str] = []
    written = [path for name, draw in FIGURES if (path := draw(run, out / name, notes)) is not None]
    if log is not None:
        for note in notes:
            log(note)
    return written


# ---------------------------------------------------------------------------------------------- comparing


def _run_names(runs: Sequence[RunRecord]) -> list[str]:
    """Directory names; a name two runs share gets parent directories added until it is unique."""
    parts = [run.dir.resolve().parts or (str(run.dir),) for run in runs]
    depths = [1] * len(runs)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depths)]
        clashing = [i for i, name in enumerate(names) if names.count(name) > 1 and depths[i] < len(parts[i])]
        if not clashing:
            return names
        for i in clashing:
            depths[i] += 1


def run_row(run: RunRecord, name: str | None = None) -> dict[str, Any]:
    """One compare.md row as raw values (None = missing), plus ``sources``: key -> a footnote for
    a value that is not from eval.json's own protocol."""
    row: dict[str, Any] = {"run": name or run.name, "run_dir": str(run.dir), "objective": run.objective()}
    sources: dict[str, str] = {}
    for key in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "alignment", "uniformity"):
        row[key] = _number(run.eval.get(key))
    if row["linear_top1"] is None and _number(run.results.get("linear_probe_top1")) is not None:
        row["linear_top1"] = _number(run.results["linear_probe_top1"])
        sources["linear_top1"] = ("results.json's linear_probe_top1: the run's own probe "
                                  "(scikit-learn, its label protocol)")
    if row["alignment"] is None or row["uniformity"] is None:
        epochs, alignment, uniformity = run.geometry_path()
        if epochs:
            row["alignment"], row["uniformity"] = alignment[-1], uniformity[-1]
            sources["alignment"] = sources["uniformity"] = "the last line of epochs.jsonl (no eval.json figure)"
    row["images_per_s"] = _number(run.results.get("images_per_s"))
    if row["images_per_s"] is None:
        rates = [v for v in (_number(r.get("images_per_s")) for r in run.metrics) if v is not None]
        if rates:
            row["images_per_s"] = sum(rates) / len(rates)
            sources["images_per_s"] = "the mean over metrics.jsonl's log windows (no results.json)"
    row["sources"] = sources
    return row


def format_cell(key: str, value: Any) -> str:
    if value is None:
        return MISSING
    if key in _PERCENT:
        return f"{100 * value:.1f}"
    if key in _GEOMETRY:
        return f"{value:.3f}"
    if key == "images_per_s":
        return f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as one Markdown table; a value from a fallback source gets a footnote mark."""
    footnotes: dict[str, str] = {}  # text -> mark
    marks = "†‡§¶"
    lines = ["| " + " | ".join(header for _, header in COLUMNS) + " |",
             "|" + "|".join("---" if key in ("run", "objective") else "---:" for key, _ in COLUMNS) + "|"]
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            cell = format_cell(key, row.get(key))
            source = row.get("sources", {}).get(key)
            if source is not None and row.get(key) is not None:
                if source not in footnotes:
                    n = len(footnotes)
                    footnotes[source] = marks[n] if n < len(marks) else f"[{n + 1}]"
                cell += footnotes[source]
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if footnotes:
        text += "\n" + "\n".join(f"{mark} {source}  " for source, mark in footnotes.items()) + "\n"
    return text


def _compare_figure(runs: Sequence[RunRecord], names: Sequence[str], path: Path) -> Path | None:
    paths = []
    for run, name in zip(runs, names):
        epochs, alignment, uniformity = run.geometry_path()
        if not epochs:
            a, u = _number(run.eval.get("alignment")), _number(run.eval.get("uniformity"))
            if a is None or u is None:
                continue
            epochs, alignment, uniformity = [run.last_epoch() or 0.0], [a], [u]
        paths.append((name, epochs, alignment, uniformity))
    if not paths:
        return None
    figure = _figure(7.2, 5.4)
    ax = figure.add_subplot()
    from matplotlib import colormaps

    # Up to 20 distinct colours (tab20), so that the 14 digits objectives never share one.
    palette = colormaps["tab10" if len(paths) <= 10 else "tab20"].colors
    colours = [palette[i % len(palette)] for i in range(len(paths))]
    for (name, epochs, alignment, uniformity), colour in zip(paths, colours):
        _draw_geometry_path(ax, epochs, alignment, uniformity, color=colour, label=name)
    ax.scatter([], [], marker="o", s=60, facecolors="none", edgecolors="black", label="first epoch")
    ax.scatter([], [], marker="*", s=120, color="0.5", edgecolors="black", linewidths=0.8, label="last epoch")
    _label_plane(ax, "alignment and uniformity, one point per epoch")
    ax.legend(fontsize=8, loc="best")
    return _save(figure, path)


def compare_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 log: Log | None = _stderr) -> list[dict[str, Any]]:
    """Write ``out_dir/compare.md`` (one Markdown table: run, objective, kNN and linear top-1/top-5,
    alignment, uniformity, images/s; missing values "—") and ``out_dir/alignment_uniformity.png``
    (one curve per run), and return the table's rows as raw values (see ``run_row``)."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory")
    missing = [str(d) for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such run directory: {', '.join(missing)}")
    runs = [RunRecord(d) for d in run_dirs]
    names = _run_names(runs)
    rows = [run_row(run, name) for run, name in zip(runs, names)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = _compare_figure(runs, names, out / "alignment_uniformity.png")
    text = ["# Run comparison", "",
            "Accuracies in percent; alignment (α = 2) and uniformity (t = 2) as Wang and Isola define them, "
            f"lower is better; {MISSING}: not recorded by the run.", "", markdown_table(rows)]
    if figure is not None:
        text += ["![alignment-uniformity plane, one curve per run](alignment_uniformity.png)", ""]
    else:
        note = "no run records alignment and uniformity (epochs.jsonl or eval.json): no alignment-uniformity figure"
        text += [f"_{note}._", ""]
        if log is not None:
            log(f"{out}: {note}")
    write_text_atomically(out / "compare.md", "\n".join(text))
    return rows


__all__ = ["COLUMNS", "MISSING", "RunRecord", "compare_runs", "format_cell", "markdown_table", "read_json",
           "read_jsonl", "run_row", "series", "write_run_figures"]
