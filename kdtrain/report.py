"""The report of a finished run: its results table in Markdown, and a figure.

Everything here reads the run's JSON files (`results.json`, each
generation's `gen-K/record.json`) as plain JSON and draws with matplotlib,
imported only when a figure is drawn: reporting on a run never starts
TensorFlow.

Example:

```python
from kdtrain import report

report.write_report("runs/ban-digits-wrn-16-1")  # report.md, report.png

results = report.read_results("runs/ban-digits-wrn-16-1")
figure = report.draw(results["table"],
                     report.read_histories("runs/ban-digits-wrn-16-1"))
figure.savefig("ban.pdf")
```
"""

import io
import math
import os

from kdtrain import files

MARKDOWN_FILE = "report.md"
FIGURE_FILE = "report.png"
_RESULTS_FILE = "results.json"
_RECORD_FILE = "record.json"
SINGLE_STYLE = {"label": "Single model", "color": "tab:blue", "marker": "o"}
ENSEMBLE_STYLE = {"label": "Ensemble", "color": "tab:orange", "marker": "s"}


# The table -------------------------------------------------------------------


def table_splits(table):
    """The data splits a results table has rows for, in order."""
    return list(dict.fromkeys(row["split"] for row in table))


def default_split(table):
    """The split a table is shown on: test, else validation, else train."""
    splits = table_splits(table)
    for split in ("test", "validation", "train"):
        if split in splits:
            return split
    raise ValueError("The table is empty.")


def markdown_table(table, split=None, metrics=("accuracy", "loss"), digits=4):
    """Rows of a results table as the report's Markdown table.

    Args:
        table: Rows (dicts with `label`, `split` and the metrics), as in
            `GenerationResult.table` or `results.json`.
        split: The split shown; defaults to `default_split(table)`.
        metrics: The metrics shown, one row each.
        digits: Decimals shown.

    Returns:
        A Markdown table with a column per model or ensemble.
    """
    split = split or default_split(table)
    rows = [row for row in table if row["split"] == split]
    header = ["Metrics"] + [row["label"] for row in rows]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(rows)) + "|",
    ]
    for metric in metrics:
        cells = []
        for row in rows:
            value = row.get(metric)
            cells.append("" if value is None else f"{value:.{digits}f}")
        title = metric.replace("_", " ").capitalize()
        lines.append("| " + " | ".join([title] + cells) + " |")
    return "\n".join(lines)


# Reading a run ---------------------------------------------------------------


def is_single_model(name):
    """Whether a table row's `name` is one model (`teacher`, `gen-K`, and
    `gen-ensemble`, the student distilled from the ensemble)."""
    return name == "teacher" or name.startswith("gen-")


def _generation_folder(name):
    return "gen-0" if name == "teacher" else name


def read_results(directory):
    """A run's `results.json`, or None when the run has not finished."""
    path = os.path.join(os.fspath(directory), _RESULTS_FILE)
    return files.read_json(path) if os.path.exists(path) else None


def read_histories(directory, results=None):
    """The training histories of a run's models, in the table's order.

    Each generation's `gen-K/record.json` holds its history (the teacher's
    is `gen-0`); the copy in `results.json` stands in for a missing file.
    A teacher given to the run has none.

    Args:
        directory: The run's directory.
        results: Its `results.json`, if already read.

    Returns:
        A dict from model name (`"teacher"`, `"gen-K"`) to its history: a
        dict from log name (`"loss"`, `"val_accuracy"`...) to one value
        per epoch.
    """
    directory = os.fspath(directory)
    if results is None:
        results = read_results(directory) or {}
    stored = results.get("generations") or {}
    histories = {}
    for name in dict.fromkeys(row["name"] for row in results.get("table")
                              or ()):
        if not is_single_model(name):
            continue
        path = os.path.join(directory, _generation_folder(name), _RECORD_FILE)
        record = (files.read_json(path) if os.path.exists(path)
                  else stored.get(name)) or {}
        if record.get("history"):
            histories[name] = record["history"]
    return histories


# The figure ------------------------------------------------------------------


def figure_class():
    """matplotlib's `Figure` class, or an ImportError naming the install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "kdtrain's report draws with matplotlib: "
            "pip install 'kdtrain[plot]'"
        ) from None
    return Figure


def accuracy_floor(values):
    """The bottom of an accuracy axis that shows `values` without zooming in.

    A round bound at least 0.05 below the lowest value, and never a range
    narrower than 0.8 to 1: a one-point gap looks like one point, not a
    gulf.
    """
    floor = math.floor((min(values) - 0.05) * 10) / 10
    return min(max(floor, 0.0), 0.8)


def split_title(split):
    """A split's name in a title: "Test", "Validation", "Training"."""
    return {"test": "Test", "validation": "Validation",
            "train": "Training"}.get(split, split.capitalize())


def _draw_models(axis, rows, split):
    """Panel (a): each model's and ensemble's metric on `split`."""
    metric = "accuracy" if any(
        row.get("accuracy") is not None for row in rows
    ) else "loss"
    rows = [row for row in rows if row.get(metric) is not None]
    values = [float(row[metric]) for row in rows]
    for style, single in ((SINGLE_STYLE, True), (ENSEMBLE_STYLE, False)):
        points = [(i, v) for i, (row, v) in enumerate(zip(rows, values))
                  if is_single_model(row["name"]) == single]
        if points:
            axis.plot([i for i, _ in points], [v for _, v in points],
                      linestyle="none", markersize=8, zorder=3, **style)
    if metric == "accuracy" and values:
        bottom, top = accuracy_floor(values), 1.0
    else:
        bottom, top = 0.0, max(values, default=1.0) * 1.15 or 1.0
    axis.set_ylim(bottom, top)
    for i, value in enumerate(values):
        # Below the point when a label above it would leave the axes.
        above = value < top - 0.1 * (top - bottom)
        axis.annotate(f"{value:.4f}", (i, value),
                      xytext=(0, 8 if above else -10),
                      textcoords="offset points", ha="center",
                      va="bottom" if above else "top", fontsize=8)
    axis.set_xticks(range(len(rows)), [row["label"] for row in rows],
                    rotation=25, ha="right")
    axis.set_xlim(-0.6, len(rows) - 0.4)
    name = f"{split_title(split)} {metric}"
    axis.set_xlabel("Model")
    axis.set_ylabel(name)
    axis.set_title(f"(a) {name} per model")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="best")


def _draw_curves(axis, histories, labels):
    """Panel (b): validation accuracy per epoch of every generation."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    validation = any(h.get("val_accuracy") for h in histories.values())
    key = "val_accuracy" if validation else "accuracy"
    curves = [(name, h[key]) for name, h in histories.items() if h.get(key)]
    colors = matplotlib.colormaps["viridis"]
    for index, (name, values) in enumerate(curves):
        # Light to dark along the chain: the teacher first.
        color = colors(0.85 * index / max(len(curves) - 1, 1))
        axis.plot(range(1, len(values) + 1), values, marker="o",
                  markersize=3, color=color, label=labels.get(name, name))
    if curves:  # The same unmagnified scale as panel (a).
        axis.set_ylim(accuracy_floor([v for _, c in curves for v in c]), 1.0)
    name = "Validation accuracy" if validation else "Training accuracy"
    axis.set_xlabel("Epoch")
    axis.set_ylabel(name)
    axis.set_title(f"(b) {name} per epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    if curves:
        axis.legend(loc="best")
    else:
        axis.text(0.5, 0.5, "No recorded histories", ha="center",
                  va="center", transform=axis.transAxes)


def _draw_tradeoff(axis, data):
    """Panel (c): test accuracy against CPU latency at batch 1."""
    rows = [row for row in data["rows"] if row.get("accuracy") is not None]
    for style, single in ((SINGLE_STYLE, True), (ENSEMBLE_STYLE, False)):
        points = [row for row in rows
                  if is_single_model(row["name"]) == single]
        if points:
            axis.plot([row["latency_ms"] for row in points],
                      [row["accuracy"] for row in points], linestyle="none",
                      markersize=8, zorder=3, **style)
    latencies = [row["latency_ms"] for row in rows]
    if latencies and max(latencies) > 10 * min(latencies):
        axis.set_xscale("log")
    if rows:
        axis.set_ylim(accuracy_floor([row["accuracy"] for row in rows]), 1.0)
        axis.set_xlim(0 if axis.get_xscale() == "linear" else None,
                      max(latencies) * 1.25)
        axis.legend(loc="lower right")
        _label_points(axis, rows)
    cpu = (data.get("machine") or {}).get("cpu", "CPU")
    axis.set_xlabel(f"Latency per sample at batch 1 (ms), {cpu}",
                    fontsize=8)
    axis.set_ylabel("Test accuracy")
    axis.set_title("(c) Accuracy against latency")
    axis.grid(alpha=0.3)


def _label_points(axis, rows):
    """Writes each row's label beside its point, where no other label is.

    Tries right of the point, first level with it then lower, then left,
    in axes fractions (a label's size estimated from its length); a thin
    line joins each label to its point.
    """
    to_axes = axis.transScale + axis.transLimits
    placed = []
    for row in rows:
        fx, fy = to_axes.transform((row["latency_ms"], row["accuracy"]))
        width, height = 0.017 * len(row["label"]), 0.05
        candidates = [(fx + 0.02, fy + 0.01)] + [
            (fx + 0.02, fy - k * height - 0.01) for k in range(1, 8)]
        candidates += [(fx - 0.02 - width, fy + 0.01)] + [
            (fx - 0.02 - width, fy - k * height - 0.01) for k in range(1, 8)]
        x, y = next(((x, y) for x, y in candidates if (
            0 <= x and x + width <= 1 and 0 <= y and y + height <= 1
            and not any(x < px + pw and px < x + width and y < py + ph
                        and py < y + height for px, py, pw, ph in placed)
        )), candidates[0])
        placed.append((x, y, width, height))
        axis.annotate(row["label"], (row["latency_ms"], row["accuracy"]),
                      xytext=(x, y), textcoords="axes fraction", fontsize=8,
                      ha="left", va="bottom", arrowprops={
                          "arrowstyle": "-", "color": "0.6", "lw": 0.6,
                          "shrinkA": 0, "shrinkB": 5})


def draw(table, histories=None, split=None, tradeoff=None):
    """The report's figure of a run: its models side by side, and learning.

    Panel (a) shows each model's and ensemble's accuracy on `split`, single
    models and ensembles told apart, each value written beside its point,
    on an axis that does not magnify small gaps (`accuracy_floor`); the
    loss when the table has no accuracy. Panel (b) shows every
    generation's validation accuracy per epoch (the training accuracy
    when the run had no validation data). With `tradeoff`, panel (c)
    plots each model's and ensemble's test accuracy against its CPU
    latency per sample at batch 1.

    Args:
        table: The results table (`results.json`'s `table`).
        histories: Model names to their histories, as `read_histories`
            returns; None draws no curves.
        split: The split of panel (a); defaults to `default_split(table)`.
        tradeoff: The run's trade-off measurements
            (`kdtrain.tradeoff.read_matching`), or None for two panels.

    Returns:
        A `matplotlib.figure.Figure` (not registered with pyplot): save it
        with `figure.savefig(...)`.
    """
    make_figure = figure_class()
    split = split or default_split(table)
    rows = [row for row in table if row["split"] == split]
    labels = {row["name"]: row["label"] for row in table}
    panels = 2 if tradeoff is None else 3
    figure = make_figure(figsize=(5.5 * panels, 4.4), layout="constrained")
    axes = figure.subplots(1, panels)
    _draw_models(axes[0], rows, split)
    _draw_curves(axes[1], histories or {}, labels)
    if tradeoff is not None:
        _draw_tradeoff(axes[2], tradeoff)
    return figure


def write_report(directory, results=None):
    """Writes a finished run's `report.md` and `report.png` into its folder.

    When the run's `tradeoff.json` (`kdtrain evaluate`) still matches its
    model files, the report adds its table and panel (c) of `draw`;
    otherwise it says how to measure them.

    Args:
        directory: The run's directory.
        results: Its `results.json`, if already read.

    Returns:
        The Markdown text written.

    Raises:
        ValueError: The directory holds no results table.
        ImportError: matplotlib is not installed (nothing is written).
    """
    directory = os.fspath(directory)
    if results is None:
        results = read_results(directory)
    table = (results or {}).get("table")
    if not table:
        raise ValueError(f"{directory} holds no finished run (no "
                         "results.json with a table).")
    split = default_split(table)
    name = os.path.basename(os.path.abspath(directory))
    from kdtrain import tradeoff as tradeoff_module

    measured = tradeoff_module.read_matching(directory)
    markdown = (f"# {name}\n\nTest split: {split}.\n\n"
                + markdown_table(table, split) + "\n\n## Trade-off\n\n")
    if measured is None:
        markdown += ("Not measured for these model files: `kdtrain evaluate "
                     f"{directory}` measures each model's size, MACs, CPU "
                     "latency and throughput.\n")
    else:
        markdown += tradeoff_module.markdown_table(measured) + "\n"
    figure = draw(table, read_histories(directory, results), split,
                  measured)
    return save_report(directory, markdown, figure)


def save_report(directory, markdown, figure):
    """Writes `report.md` and `report.png` into `directory`, each whole.

    Returns:
        `markdown`.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    files.write_text_atomically(os.path.join(directory, MARKDOWN_FILE),
                                markdown)
    files.write_bytes_atomically(os.path.join(directory, FIGURE_FILE),
                                 buffer.getvalue())
    return markdown
