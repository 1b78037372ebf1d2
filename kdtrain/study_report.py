"""The reports of studies and sweeps: their tables and figures.

A study's figure shows every model's seeds as points and its mean with the
95% confidence interval as an error bar, beside the paired differences
against the teacher; a sweep's shows the students' mean accuracy over the
grid as a heatmap, one panel per loss. Plain Python and matplotlib: no
TensorFlow.

Example:

```python
from kdtrain import study_report

study_report.write("runs/fashion-mnist-wrn-16-1-seeds")  # report.md, .png
```
"""

import os

from kdtrain import report
from kdtrain import study
from kdtrain import sweep



def _error_bars(axis, rows, key, metric):
    """Means with interval bars, and each seed as a small point."""
    drawn = set()
    for index, row in enumerate(rows):
        summary = row[key].get(metric)
        if not summary:
            continue
        style = dict(report.SINGLE_STYLE if report.is_single_model(
            row["name"]) else report.ENSEMBLE_STYLE)
        label = style.pop("label")
        values = summary["values"]
        offsets = [0.12 * (i - (len(values) - 1) / 2) / max(len(values), 1)
                   for i in range(len(values))]
        axis.plot([index + o for o in offsets], values, linestyle="none",
                  marker=".", color="0.45", markersize=6, zorder=2,
                  label=None if "seed" in drawn else "One seed")
        drawn.add("seed")
        low, high = summary.get("low"), summary.get("high")
        error = None if low is None else [[summary["mean"] - low],
                                          [high - summary["mean"]]]
        axis.errorbar([index], [summary["mean"]], yerr=error, capsize=5,
                      markersize=8, linestyle="none", zorder=3,
                      label=None if label in drawn else
                      f"{label}: mean, 95% CI", **style)
        drawn.add(label)
    axis.set_xticks(range(len(rows)), [row["label"] for row in rows],
                    rotation=25, ha="right")
    axis.set_xlim(-0.6, len(rows) - 0.4)
    axis.set_xlabel("Model")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="best", fontsize=8)


def draw_study(results, metric="accuracy"):
    """The figure of a study's `results.json`.

    Panel (a): each model's and ensemble's metric, every seed a point, the
    mean with its 95% confidence interval. Panel (b): the paired
    difference against the teacher of the same seed, with its interval
    and a line at 0: an interval that crosses it shows no detectable
    difference.

    Returns:
        A `matplotlib.figure.Figure`.
    """
    figure = report.figure_class()(figsize=(11, 4.4), layout="constrained")
    values_axis, difference_axis = figure.subplots(1, 2)
    rows = results["summary"]
    _error_bars(values_axis, rows, "metrics", metric)
    everything = [v for row in rows for v in
                  row["metrics"].get(metric, {}).get("values", [])]
    if metric == "accuracy" and everything:
        values_axis.set_ylim(report.accuracy_floor(everything), 1.0)
    name = f"{report.split_title(results['split'])} {metric}"
    values_axis.set_ylabel(name)
    values_axis.set_title(f"(a) {name}, {len(results['seeds'])} seeds")
    compared = [row for row in rows if row["difference"].get(metric)]
    _error_bars(difference_axis, compared, "difference", metric)
    difference_axis.axhline(0.0, color="black", linewidth=0.8, zorder=1)
    difference_axis.set_ylabel(f"{name} minus the teacher's")
    difference_axis.set_title("(b) Paired difference against the teacher")
    return figure


def _cell_text(summary, teacher_mean):
    text = f"{summary['mean']:.4f}"
    if summary.get("low") is not None:
        text += f"\n±{(summary['high'] - summary['low']) / 2:.4f}"
    return text + f"\nΔ {summary['mean'] - teacher_mean:+.4f}"


def draw_sweep(results, metric="accuracy"):
    """The figure of a sweep's `results.json`: a heatmap per loss.

    Each cell is a grid point: the students' mean `metric` over the seeds
    (with the half-width of its 95% interval when there are several) and
    its difference from the teacher's mean. The colour scale spans at least
    the widest interval, so that cells within the noise look alike.

    Returns:
        A `matplotlib.figure.Figure`.
    """
    grid = results["grid"]
    losses = grid["loss"]
    temperatures, weights = grid["temperature"], grid["ground_truth_weight"]
    teacher = sweep.teacher_row(results)["metrics"][metric]["mean"]
    cells = {}
    for point in results["points"]:
        for row in point["summary"]:
            if row["name"] == sweep.STUDENT:
                cells[point["loss"], point["temperature"],
                      point["ground_truth_weight"]] = row["metrics"][metric]
    means = [c["mean"] for c in cells.values()]
    low, high = min(means + [teacher]), max(means + [teacher])
    # The colour scale spans at least the widest interval: differences
    # within the noise look alike rather than a gulf.
    noise = max([c["high"] - c["low"] for c in cells.values()
                 if c.get("low") is not None], default=0.0)
    if high - low < noise:
        middle = (low + high) / 2
        low, high = middle - noise / 2, middle + noise / 2
    figure = report.figure_class()(
        figsize=(1.6 + 3.2 * len(losses) + 1.0, 1.8 + 0.9 * len(weights)),
        layout="constrained",
    )
    axes = figure.subplots(1, len(losses), squeeze=False)[0]
    image = None
    for axis, loss in zip(axes, losses):
        table = [[cells[loss, t, w]["mean"] for t in temperatures]
                 for w in weights]
        image = axis.imshow(table, cmap="viridis", vmin=low, vmax=high,
                            origin="lower", aspect="auto")
        for i, weight in enumerate(weights):
            for j, temperature in enumerate(temperatures):
                summary = cells[loss, temperature, weight]
                bright = summary["mean"] > (low + high) / 2
                axis.text(j, i, _cell_text(summary, teacher), ha="center",
                          va="center", fontsize=8,
                          color="black" if bright else "white")
        axis.set_xticks(range(len(temperatures)), [
            "default" if t is None else f"{t:g}" for t in temperatures])
        axis.set_yticks(range(len(weights)), [f"{w:g}" for w in weights])
        axis.set_xlabel("Temperature T")
        axis.set_ylabel("Ground-truth weight w")
        axis.set_title(f"{loss}: student {metric}")
    colorbar = figure.colorbar(image, ax=list(axes))
    colorbar.set_label(f"Mean {report.split_title(results['split']).lower()}"
                       f" {metric} (teacher {teacher:.4f})")
    return figure


def write(directory, results=None):
    """Writes a finished study's or sweep's `report.md` and `report.png`.

    Args:
        directory: The study's or sweep's directory.
        results: Its `results.json`, if already read.

    Returns:
        The Markdown text written.

    Raises:
        ValueError: The directory holds no finished study or sweep.
        ImportError: matplotlib is not installed (nothing is written).
    """
    directory = os.fspath(directory)
    if results is None:
        results = study.read_study(directory) or sweep.read_sweep(directory)
    if not results or not results.get("complete"):
        raise ValueError(f"{directory} holds no finished study or sweep.")
    name = os.path.basename(os.path.abspath(directory))
    if results["kind"] == study.KIND:
        body, figure = study.study_markdown(results), draw_study(results)
    else:
        body, figure = sweep.sweep_markdown(results), draw_sweep(results)
    return report.save_report(directory, f"# {name}\n\n{body}\n", figure)
