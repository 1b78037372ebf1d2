"""Sweeps: one teacher, one student per point of a grid of distillation
settings (loss x temperature x ground-truth weight).

Every point's student starts from the same weights and sees the same
batches in the same order (the same seed): common random numbers, so that
two points differ only by their setting and their difference is sharper
than two independent runs'. The teacher is trained once, by the first
point's chain; the other points load it from that chain's `gen-0`, and a
process keeps its last teacher outputs (`kdtrain.cache`), so unaugmented
data are run through the teacher once for the whole grid.

```
SWEEP/
  config.toml            the command line's settings (kdtrain sweep)
  [seed-K/]              with several seeds, one folder of points per seed
    LOSS-tT-wW/          one point's chain: a run directory (gen-0, gen-1)
  results.json           every point's table per seed and their summary
  report.md, report.png  kdtrain report: the table and a heatmap
```

Everything but `run_sweep`'s callback is plain Python.
"""

import os
import re

from kdtrain import __version__
from kdtrain import files
from kdtrain import study
from kdtrain.options import SWEPT as KEYS
from kdtrain.study import check_seeds
from kdtrain.study import markdown_summary
from kdtrain.study import seed_directory
from kdtrain.study import summarize

RESULTS_FILE = "results.json"
KIND = "sweep"
STUDENT = "gen-1"
_POINT_DIR = re.compile(r"^(seed-\d+|[a-z_]+(-t[0-9.e+-]+)?-w[0-9.e+-]+)$")


def _number(value):
    return f"{value:.12g}"


def point_name(point):
    """A point's folder: `"kl-t4-w0.5"` (no `-tT` for the loss's default)."""
    name = point["loss"]
    if point.get("temperature") is not None:
        name += f"-t{_number(point['temperature'])}"
    return f"{name}-w{_number(point['ground_truth_weight'])}"


def make_grid(loss, temperature, ground_truth_weight):
    """The grid's points, in order: every combination of the values.

    Args:
        loss: Loss names.
        temperature: Temperatures (None for the loss's own).
        ground_truth_weight: Weights in [0, 1].

    Returns:
        A list of dicts with the keys `KEYS`.
    """
    points = [{}]
    for key, values in zip(KEYS, (loss, temperature, ground_truth_weight)):
        if not values:
            raise ValueError(f"`{key}` needs at least one value.")
        points = [dict(point, **{key: value}) for point in points
                  for value in values]
    names = [point_name(p) for p in points]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"The grid names two points alike ({', '.join(repeated)}): "
            "give values that differ in their first 12 digits."
        )
    return points


def sweep_runs(results):
    """A sweep's runs as (folder, table) pairs, for `study.stale_runs`."""
    return [((point.get("folders") or {}).get(seed, point["name"]), table)
            for point in results["points"]
            for seed, table in point["runs"].items()]


def check_directory(directory):
    """Refuses a sweep directory holding anything but a sweep; reads only.

    Raises:
        ValueError: A single run, or files kdtrain does not write here.
    """
    study.check_directory(directory, "sweep", _POINT_DIR)


def sweep_results(points, tables, seeds, split=None, folders=None):
    """The JSON value of a finished sweep's `results.json`.

    Args:
        points: The grid's points (`make_grid`).
        tables: A dict from (point name, seed) to that chain's table.
        seeds: The seeds, in order.
        split: The split summarized (default: test, else validation).
        folders: A dict from (point name, seed) to the chain's folder,
            relative to the sweep's directory (default: the point's name).
    """
    entries = []
    for point in points:
        name = point_name(point)
        runs = {seed: tables[name, seed] for seed in seeds}
        summary = summarize(runs, split)
        entries.append(dict(point, name=name, runs={
            str(seed): table for seed, table in runs.items()
        }, folders={str(seed): (folders or {}).get((name, seed), name)
                    for seed in seeds}, summary=summary))
    return {
        "kind": KIND, "complete": True, "kdtrain_version": __version__,
        "seeds": list(seeds), "split": entries[0]["summary"][0]["split"],
        "grid": {key: list(dict.fromkeys(p[key] for p in points))
                 for key in KEYS},
        "points": entries,
    }


def _student_rows(results):
    """Per point: the student's summary row, labelled by its setting."""
    rows = []
    for point in results["points"]:
        for row in point["summary"]:
            if row["name"] == STUDENT:
                temperature = point["temperature"]
                label = (f"{point['loss']}, T={_number(temperature)}"
                         if temperature is not None else point["loss"])
                label += f", w={_number(point['ground_truth_weight'])}"
                rows.append(dict(row, label=label))
    return rows


def teacher_row(results):
    """The teacher's summary row (the same teacher at every point)."""
    for row in results["points"][0]["summary"]:
        if row["name"] == "teacher":
            return row
    raise ValueError("The sweep's tables have no teacher.")


def sweep_markdown(results, metric="accuracy", digits=4):
    """A sweep's `results.json` as Markdown: the teacher, then a row per
    point with the student's mean, interval and paired difference."""
    teacher = teacher_row(results)["metrics"][metric]
    rows = [dict(teacher_row(results), label="Teacher (all points)")]
    text = (f"{study.study_header(results)} One teacher per seed (mean "
            f"{teacher['mean']:.{digits}f}); at every point a student from "
            "the same initial weights and data order.\n\n")
    return text + markdown_summary(rows + _student_rows(results), metric,
                                   digits)


def read_sweep(directory):
    """A sweep's `results.json`, or None when it is not a finished sweep."""
    return study.read_results(directory, KIND)


def point_directory(directory, point, seed=None):
    """Where the chain of `point` (and `seed`, with several) runs."""
    base = directory if seed is None else seed_directory(directory, seed)
    return os.path.join(base, point_name(point))


def run_sweep(points, run_point, directory, seeds=(0,), per_seed=False):
    """Runs one chain per grid point (per seed), then summarizes them.

    Args:
        points: The grid (`make_grid`).
        run_point: A function `(point, seed, directory, first)` that runs
            (or resumes) the chain of `point` with `seed` in `directory`
            and returns its `GenerationResult`; `first` is None for the
            grid's first point, which trains the teacher, and that point's
            result for the others, which learn from the same teacher.
        directory: The sweep's directory.
        seeds: The seeds; each gets its own teacher.
        per_seed: Whether each seed's points go in `directory/seed-K`
            (with `--seeds`) rather than in `directory`.

    Returns:
        The JSON value written to `results.json`.
    """
    from kdtrain.chain.lock import DirectoryLock  # noqa: PLC0415

    seeds = check_seeds(seeds)
    directory = os.path.abspath(os.fspath(directory))
    check_directory(directory)
    tables, folders = {}, {}
    with DirectoryLock(directory):
        study.start(directory)
        for seed in seeds:
            first = None
            for point in points:
                folder = point_directory(directory, point,
                                         seed if per_seed else None)
                result = run_point(point, seed, folder, first)
                first = first or result
                tables[point_name(point), seed] = result.table
                folders[point_name(point), seed] = os.path.relpath(
                    folder, directory)
        value = sweep_results(points, tables, seeds, folders=folders)
        files.write_json_atomically(os.path.join(directory, RESULTS_FILE),
                                    value, fault="sweep/results.write")
    return value
