"""What the `kdtrain` command answers without TensorFlow.

Importing TensorFlow takes most of a command's start-up (seconds, tens of
seconds on a slow machine). Neither a mistake that needs no model nor the
table of a run that has finished needs it: `kdtrain.cli` asks this module
first, and imports `kdtrain.commands` (and TensorFlow) only when training
or evaluating is left to do.
"""

import dataclasses
import importlib.util
import os
import sys
import tomllib

from kdtrain import __version__
from kdtrain import files
from kdtrain.chain.directory import RESULTS_FILE
from kdtrain.chain.errors import DirectoryLocked
from kdtrain.chain.lock import DirectoryLock
from kdtrain.models.names import built_in_names
from kdtrain.models.names import is_built_in
from kdtrain.options import CONFIG_FILE
from kdtrain.options import EXIT_OK
from kdtrain.options import NOT_IDENTITY
from kdtrain.options import UsageError
from kdtrain.options import config_text
from kdtrain.report import markdown_table



def check(command, settings):
    """Refuses, before TensorFlow loads, what can be refused without it.

    Raises:
        UsageError: An unknown model name, a missing run directory for
            `evaluate` or `report`, or `report` without matplotlib; for
            `export`, see `kdtrain.run_export.check`.
    """
    if command == "export":
        from kdtrain import run_export

        _refuse_study_or_sweep(command, settings.directory)
        run_export.check(settings)
        return
    for key in ("model", "teacher_model"):
        name = getattr(settings, key, None)
        if name is not None and not _known_model(name):
            raise UsageError(
                f"--{key.replace('_', '-')} {name}: no such model. Known: "
                f"{', '.join(built_in_names())} (e.g. wrn-16-1)."
            )
    if command in ("evaluate", "report") and not os.path.isdir(
        settings.directory
    ):
        raise UsageError(f"{settings.directory}: no such directory.")
    if command == "evaluate":
        _refuse_study_or_sweep(command, settings.directory)
    if command == "report" and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "kdtrain report draws with matplotlib, which is not installed: "
            "pip install matplotlib (or, in a clone of kdtrain, "
            "pip install -e \".[plot]\")."
        )


def report(settings):
    """`kdtrain report`: writes a finished run's `report.md` and
    `report.png` into its folder and prints the table; returns the exit
    code."""
    from kdtrain.chain.directory import ChainDirectory
    from kdtrain.options import read_run_config
    from kdtrain.report import write_report

    if _is_study_or_sweep(settings.directory):
        return _study_report(settings.directory)
    directory = ChainDirectory(settings.directory)
    with directory.lock:
        results = directory.read_results()
        if not results or not results.get("table"):
            raise UsageError(
                f"{directory.path} holds no finished run (no results.json "
                "with a table): finish the run first."
            )
        saved = read_run_config(directory.path)
        if saved.command == "distill":
            labels = distill_labels(saved)
            results = dict(results, table=[
                dict(row, label=labels.get(row["name"], row["label"]))
                for row in results["table"]
            ])
        try:
            markdown = write_report(directory.path, results)
        except ImportError as error:  # matplotlib, an optional extra
            raise UsageError(str(error)) from None
    print(markdown)
    print(f"Wrote {directory.file('report.md')} and "
          f"{directory.file('report.png')}")
    return EXIT_OK


def _refuse_study_or_sweep(command, directory):
    """`evaluate` and `export` take one run, not a study or sweep of them."""
    if not _is_study_or_sweep(directory):
        return
    runs = _runs_inside(directory)
    example = os.path.join(directory, runs[0] if runs else "seed-0")
    raise UsageError(
        f"{directory} is a study or sweep: {command} one of its runs "
        f"({', '.join(runs[:6]) or 'none yet'}), e.g. kdtrain {command} "
        f"{example}; kdtrain report {directory} summarizes them."
    )


def _runs_inside(directory):
    """The run folders of a study or sweep (`seed-K`, `seed-K/POINT`...)."""
    runs = []
    for root, folders, names in os.walk(directory):
        if CONFIG_FILE in names and root != directory:
            runs.append(os.path.relpath(root, directory))
            folders.clear()
        folders.sort()
    return sorted(runs)


def _is_study_or_sweep(directory):
    """Whether `directory` is a study's or a sweep's (its config says)."""
    try:
        with open(os.path.join(directory, CONFIG_FILE), "rb") as file:
            recorded = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    return recorded.get("command") == "sweep" or "seeds" in recorded


def _study_report(directory):
    """`kdtrain report` of a study or a sweep."""
    from kdtrain import study
    from kdtrain import study_report
    from kdtrain import sweep

    lock = DirectoryLock(directory)
    lock.acquire(shared=True)  # not while the study runs
    try:
        results = study.read_study(directory) or sweep.read_sweep(directory)
        if not results or not results.get("complete"):
            raise UsageError(
                f"{directory} holds a study or sweep that has not finished "
                "(no results.json): run its command again to finish it."
            )
        runs = (study.study_runs(results) if results["kind"] == study.KIND
                else sweep.sweep_runs(results))
        stale = study.stale_runs(directory, runs)
        if stale:
            raise UsageError(
                f"The summary in {directory} no longer matches its runs "
                f"({', '.join(stale[:6])} changed since): run its command "
                "again to summarize them (finished runs are loaded, not "
                "trained again)."
            )
        try:
            markdown = study_report.write(directory, results)
        except ImportError as error:
            raise UsageError(str(error)) from None
    finally:
        lock.release()
    print(markdown)
    print(f"Wrote {os.path.join(directory, 'report.md')} and "
          f"{os.path.join(directory, 'report.png')}")
    return EXIT_OK


def _known_model(name):
    """A built-in model, or one registered in this process (a script that
    registers its own models and then calls `kdtrain.cli.main`)."""
    if is_built_in(name):
        return True
    registry = sys.modules.get("kdtrain.models.registry")
    return registry is not None and name.strip().lower() in registry.available()


def distill_labels(settings):
    """The table's column names of a `distill` run."""
    teacher = settings.teacher_model if not settings.teacher else "teacher"
    return {"teacher": f"Teacher ({teacher})",
            "gen-1": f"Student ({settings.model})"}


def _comparable(text):
    lines = text.splitlines()
    return [line for line in lines
            if not line.startswith(tuple(f"{k} =" for k in NOT_IDENTITY))]


def finished_table(command, settings):
    """The table of the finished run `settings` would train, or None.

    The run must have been made with the same settings (its `config.toml`,
    display flags aside), its `results.json` must be complete, and every
    model file must still match the SHA-256 its record holds; anything else
    (or a run in use) is left to the full command, which explains it.

    Returns:
        The Markdown table, or None.
    """
    if command not in ("ban", "distill") or settings.dry_run or (
        settings.overwrite or settings.retrain_from is not None
    ):
        return None
    if settings.seeds is not None:
        return _finished_study(command, settings)
    if settings.teacher or settings.data_dir:
        # Files that may have changed since: only the full command's
        # checks (the teacher's weights, the samples' keys) can tell.
        return None
    directory = settings.directory
    try:
        with open(os.path.join(directory, CONFIG_FILE)) as file:
            recorded = file.read()
    except OSError:
        return None
    if _comparable(recorded) != _comparable(config_text(settings)):
        return None
    lock = DirectoryLock(directory)
    try:
        lock.acquire(shared=True)
    except DirectoryLocked:
        return None
    try:
        return _verified_table(directory, command, settings)
    finally:
        lock.release()


def _finished_study(command, settings):
    """A finished study's table, when every seed's run is finished,
    unchanged, and the one the study summarized; else None."""
    from kdtrain import study

    try:
        results = study.read_study(settings.directory)
    except (OSError, ValueError):
        return None
    if not results or not results.get("complete") or (
        results.get("kdtrain_version") != __version__
    ) or results.get("seeds") != list(settings.seeds) or study.stale_runs(
        settings.directory, study.study_runs(results)
    ):
        return None
    for seed in settings.seeds:  # each run's settings and model files
        seeded = dataclasses.replace(
            settings, seeds=None, seed=seed,
            directory=study.seed_directory(settings.directory, seed),
        )
        if finished_table(command, seeded) is None:
            return None
    return study.study_markdown(results)


def _verified_table(directory, command, settings):
    try:
        results = files.read_json(os.path.join(directory, RESULTS_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or not results.get("complete") or (
        not results.get("table")
    ) or results.get("kdtrain_version") != __version__:
        return None  # another version may build or evaluate differently
    for record in (results.get("generations") or {}).values():
        path = os.path.join(directory, str(record.get("path")))
        if not os.path.isfile(path) or (
            files.sha256_file(path) != record.get("sha256")
        ):
            return None
    table = results["table"]
    if command == "distill":
        labels = distill_labels(settings)
        table = [dict(row, label=labels.get(row["name"], row["label"]))
                 for row in table]
    return markdown_table(table)
