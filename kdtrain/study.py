"""Studies: the same chain run with several seeds, summarized with intervals.

One seed cannot tell a gain from noise: runs of the same recipe move by
about half a point. A study runs independent chains, one per seed, each in
its own resumable, locked directory, and reports every model's mean, its
95% confidence interval (Student's t) and its paired difference against
the teacher of the same seed.

```
STUDY/
  .kdtrain.lock        held while the study runs
  config.toml          the command line's settings (kdtrain ban --seeds)
  seed-K/              the chain of seed K: a run directory of its own
  results.json         the study: every seed's table and the summary,
                       written once every seed has finished
  report.md, report.png   kdtrain report
```

Everything here but `run_study`'s callback is plain Python: the command
line prints a finished study's table, and `kdtrain report` draws it,
without TensorFlow.
"""

import os
import re

from kdtrain import __version__
from kdtrain import files
from kdtrain import stats
from kdtrain.report import default_split

RESULTS_FILE = "results.json"
KIND = "study"
_SEED_DIR = re.compile(r"^seed-\d+$")
# The names a study directory may hold besides its seeds' folders.
_OWN = {".kdtrain.lock", "config.toml", RESULTS_FILE, "report.md",
        "report.png"}


def check_seeds(seeds, argument="seeds"):
    """`seeds` as a tuple of distinct integers >= 0 (at least one).

    Raises:
        ValueError: Naming `argument` and the value.
    """
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"`{argument}` must be a list of integers. "
                         f"Received: {argument}={seeds!r}")
    seeds = tuple(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(
        s, int) or s < 0]
    if not seeds or bad:
        raise ValueError(
            f"`{argument}` must list integers >= 0, at least one. Received: "
            f"{argument}={list(seeds)!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`{argument}` lists a seed twice. Received: "
                         f"{argument}={list(seeds)!r}")
    return seeds


def seed_directory(directory, seed):
    """The run directory of `seed` inside the study `directory`."""
    return os.path.join(os.fspath(directory), f"seed-{seed}")


def check_directory(directory, what="study", folders=_SEED_DIR):
    """Refuses a study's directory that holds anything but a study.

    Reads only.

    Args:
        directory: The directory.
        what: `"study"` or `"sweep"`, for the messages.
        folders: The pattern of the run folders it may hold.

    Raises:
        ValueError: The directory holds a single run, or files kdtrain does
            not write there.
    """
    if not os.path.isdir(directory):
        return
    if os.path.exists(os.path.join(directory, "run.json")):
        raise ValueError(
            f"{directory} holds a single run, not a {what}: give the {what} "
            "a directory of its own."
        )
    foreign = sorted(n for n in os.listdir(directory) if n not in _OWN
                     and not folders.match(n) and not files.is_temporary(n))
    if foreign:
        raise ValueError(
            f"The directory {directory} holds files kdtrain did not write: "
            f"{', '.join(foreign[:12])}. A {what} starts in an empty "
            "directory (or resumes its own). Nothing was changed."
        )


def remove_temporaries(directory):
    """Removes what a killed write left in `directory` (under its lock)."""
    for name in os.listdir(directory):
        if files.is_temporary(name):
            files.remove(os.path.join(directory, name))


# Summaries --------------------------------------------------------------------


def summarize(tables, split=None, baseline="teacher", confidence=0.95):
    """Each model's metrics over seeds, and its paired difference.

    Args:
        tables: A dict from seed to that seed's results table (rows with
            `name`, `label`, `split` and metrics), as in `results.json`.
        split: The split summarized; defaults to the tables' test split
            (else validation, else training).
        baseline: The model every other is compared with, seed by seed.
        confidence: The intervals' level.

    Returns:
        A list of rows, one per model or ensemble in the tables' order:
        `name`, `label`, `split`, `seeds`, `metrics` (metric name to
        `stats.Summary.to_dict()`) and `difference` (the same, of the
        paired differences against `baseline`; empty for the baseline).
    """
    if not tables:
        raise ValueError("`tables` is empty: no seed has finished.")
    seeds = list(tables)
    split = split or default_split(next(iter(tables.values())))
    rows = {}
    for seed in seeds:
        for row in tables[seed]:
            if row["split"] == split:
                rows.setdefault(row["name"], {})[seed] = row
    reference = rows.get(baseline, {})
    summary = []
    for name, by_seed in rows.items():
        present = [s for s in seeds if s in by_seed]
        entry = {"name": name, "label": by_seed[present[0]]["label"],
                 "split": split, "seeds": present, "metrics": {},
                 "difference": {}}
        for metric in _metrics(by_seed.values()):
            values = [by_seed[s][metric] for s in present]
            entry["metrics"][metric] = stats.describe(
                values, confidence).to_dict()
            paired = [s for s in present if reference.get(s, {}).get(
                metric) is not None]
            if name != baseline and paired:
                entry["difference"][metric] = stats.paired(
                    [by_seed[s][metric] for s in paired],
                    [reference[s][metric] for s in paired], confidence,
                ).to_dict()
        summary.append(entry)
    return summary


def _metrics(rows):
    """The numeric metrics every row has (accuracy, loss...)."""
    rows = list(rows)
    names = [k for k, v in rows[0].items() if isinstance(v, (int, float))
             and not isinstance(v, bool) and k not in ("params", "wall_time")]
    return [k for k in names if all(
        isinstance(r.get(k), (int, float)) for r in rows)]


def _interval(summary, digits):
    if summary.get("low") is None:
        return "n/a (1 seed)"
    return f"[{summary['low']:.{digits}f}, {summary['high']:.{digits}f}]"


def _mean(summary, digits, signed=False):
    sign = "+" if signed else ""
    text = f"{summary['mean']:{sign}.{digits}f}"
    if summary.get("std") is not None:
        text += f" ± {summary['std']:.{digits}f}"
    return text


def markdown_summary(summary, metric="accuracy", digits=4,
                     baseline="teacher"):
    """A study's summary as a Markdown table, one row per model.

    Args:
        summary: The rows of `summarize`.
        metric: The metric shown.
        digits: Decimals shown.
        baseline: How the header names the model compared with.

    Returns:
        The table: mean ± standard deviation, its interval, the paired
        difference against the teacher with its interval, and each seed's
        value.
    """
    title = metric.replace("_", " ").capitalize()
    lines = [
        f"| Model | {title} (mean ± sd) | 95% CI | Δ vs {baseline} (paired) "
        "| 95% CI of Δ | Per seed |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in summary:
        values = row["metrics"].get(metric)
        if values is None:
            continue
        difference = row["difference"].get(metric)
        cells = [row["label"], _mean(values, digits),
                 _interval(values, digits),
                 _mean(difference, digits, signed=True) if difference
                 else "", _interval(difference, digits) if difference
                 else "",
                 ", ".join(f"{v:.{digits}f}" for v in values["values"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Metrics for which a larger value is a better model.
HIGHER_IS_BETTER = ("accuracy", "sparse_categorical_accuracy",
                    "categorical_accuracy", "binary_accuracy", "auc")


def conclusion(summary, metric="accuracy", digits=4, baseline="the teacher"):
    """What the paired intervals allow one to say, model by model.

    Args:
        summary: The rows of `summarize`.
        metric: The metric compared. For one in `HIGHER_IS_BETTER` an
            interval above 0 reads "better"; for others (a loss) it reads
            "higher", which says nothing about better.
        digits: Decimals shown.
        baseline: How the lines name the model compared with.

    Returns:
        One line per compared model: better, worse, or no detectable
        difference. No verdict where there is no interval: one seed, or
        every seed giving the same difference (accuracies move in steps of
        one test sample, so a few seeds can agree exactly).
    """
    up, down = (("better than", "worse than") if metric in HIGHER_IS_BETTER
                else ("higher than", "lower than"))
    lines = []
    for row in summary:
        difference = row["difference"].get(metric)
        if not difference:
            continue
        mean = f"Δ {difference['mean']:+.{digits}f}"
        if difference.get("low") is None:
            lines.append(f"- {row['label']}: one seed, no interval.")
        elif difference["std"] == 0:
            lines.append(f"- {row['label']}: every seed gave the same "
                         f"difference ({mean}); too few seeds for an "
                         "interval.")
        elif difference["low"] > 0:
            lines.append(f"- {row['label']}: {up} {baseline} ({mean}, "
                         "interval above 0).")
        elif difference["high"] < 0:
            lines.append(f"- {row['label']}: {down} {baseline} ({mean}, "
                         "interval below 0).")
        else:
            lines.append(f"- {row['label']}: no detectable difference "
                         f"(interval {_interval(difference, digits)} "
                         "contains 0).")
    return "\n".join(lines)


def study_header(results):
    """The line above a study's table: split, seeds, what the cells are."""
    seeds = results["seeds"]
    return (f"{results['split'].capitalize()} split, {len(seeds)} seed"
            f"{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"
            "; mean ± sample standard deviation; 95% confidence intervals "
            "from Student's t with n - 1 degrees of freedom.")


def study_markdown(results, metric="accuracy", digits=4):
    """A study's `results.json` as its header, table and conclusion."""
    parts = [study_header(results), "",
             markdown_summary(results["summary"], metric, digits)]
    said = conclusion(results["summary"], metric, digits)
    if said:
        parts += ["", said]
    return "\n".join(parts)


def study_results(tables, directories=None, split=None):
    """The JSON value of a finished study's `results.json`."""
    tables = {int(k): v for k, v in tables.items()}
    summary = summarize(tables, split)
    return {
        "kind": KIND, "complete": True, "kdtrain_version": __version__,
        "seeds": list(tables), "split": summary[0]["split"],
        "runs": {str(seed): {"directory": (directories or {}).get(
            seed, f"seed-{seed}"), "table": table}
            for seed, table in tables.items()},
        "summary": summary,
    }


def read_results(directory, kind=KIND):
    """The `results.json` of a study (or of a sweep: `kind="sweep"`), or
    None when the directory holds no finished one."""
    path = os.path.join(os.fspath(directory), RESULTS_FILE)
    if not os.path.exists(path):
        return None
    results = files.read_json(path)
    if not isinstance(results, dict) or results.get("kind") != kind:
        return None
    return results


def read_study(directory):
    """A study's `results.json`, or None when it is not a finished study."""
    return read_results(directory)


def stale_runs(directory, runs):
    """The runs whose own `results.json` no longer holds the table that a
    study's or sweep's `results.json` summarized.

    Args:
        directory: The study's or sweep's directory.
        runs: Pairs of (a run's folder relative to `directory`, the table
            summarized from it).

    Returns:
        The folders whose numbers changed since (retrained, unfinished,
        missing).
    """
    stale = []
    for folder, table in runs:
        path = os.path.join(directory, folder, RESULTS_FILE)
        try:
            own = files.read_json(path)
        except (OSError, ValueError):
            own = None
        if not isinstance(own, dict) or not own.get("complete") or (
            _measured(own.get("table")) != _measured(table)
        ):
            stale.append(folder)
    return stale


def _measured(table):
    """A table's rows without their labels: the command names the columns
    for display (`kdtrain distill`'s "Student (wrn-16-1)"), the run does
    not record them so."""
    return [{k: v for k, v in row.items() if k != "label"}
            for row in table or ()]


def study_runs(results):
    """A study's runs as (folder, table) pairs, for `stale_runs`."""
    return [(run["directory"], run["table"])
            for run in results["runs"].values()]


def start(directory):
    """Prepares a locked study or sweep directory for a (re)run.

    Its summary is removed first: until the run has finished and summarized
    every seed again, no `results.json` speaks for runs that may change.
    """
    remove_temporaries(directory)
    files.remove(os.path.join(directory, RESULTS_FILE))


# Running ----------------------------------------------------------------------


class StudyResult:
    """What `run_study` produced.

    Attributes:
        seeds: The seeds, in order.
        results: A dict from seed to its chain's `GenerationResult`.
        summary: The rows of `summarize`: each model's mean, interval and
            paired difference against the teacher.
        directory: The study's directory, or None.
        split: The split summarized.

    Example:

    ```python
    study = runner.run_seeds([0, 1, 2], (x, y), test_data=(x_t, y_t))
    print(study.to_markdown())
    study.row("gen-1")["difference"]["accuracy"]["low"]
    ```
    """

    def __init__(self, seeds, results, summary, directory=None):
        self.seeds = list(seeds)
        self.results = dict(results)
        self.summary = summary
        self.directory = directory
        self.split = summary[0]["split"]

    def row(self, name):
        """The summary row of model or ensemble `name`."""
        for row in self.summary:
            if row["name"] == name:
                return row
        raise KeyError(f"No row for {name!r}.")

    def to_markdown(self, metric="accuracy", digits=4):
        """The study's table, with the intervals' conclusion."""
        return study_markdown({"seeds": self.seeds, "split": self.split,
                               "summary": self.summary}, metric, digits)

    def __repr__(self):
        return (f"<StudyResult seeds={self.seeds}, "
                f"directory={self.directory!r}>")


def run_study(seeds, run_seed, directory=None, split=None):
    """Runs one chain per seed, then summarizes them.

    A seed whose chain has finished is loaded, not trained again (its
    runner verifies it); a killed study resumes at the seed it stopped in.

    Args:
        seeds: Distinct integers >= 0.
        run_seed: A function `(seed, directory)` that runs (or resumes) the
            chain of `seed` in `directory` (None without a study directory)
            and returns its `GenerationResult`.
        directory: The study's directory, or None to write nothing.
        split: The split summarized (default: test, else validation).

    Returns:
        A `StudyResult`.

    Raises:
        ValueError: Bad seeds, or a directory that is not a study's.
        DirectoryLocked: Another process runs this study.
    """
    from kdtrain.chain.lock import DirectoryLock  # noqa: PLC0415

    seeds = check_seeds(seeds)
    if directory is None:
        results = {seed: run_seed(seed, None) for seed in seeds}
        summary = summarize({s: r.table for s, r in results.items()}, split)
        return StudyResult(seeds, results, summary)
    directory = os.path.abspath(os.fspath(directory))
    check_directory(directory)
    with DirectoryLock(directory):
        start(directory)
        results = {seed: run_seed(seed, seed_directory(directory, seed))
                   for seed in seeds}
        value = study_results({s: r.table for s, r in results.items()},
                              split=split)
        files.write_json_atomically(os.path.join(directory, RESULTS_FILE),
                                    value, fault="study/results.write")
    return StudyResult(seeds, results, value["summary"], directory)
