"""`ChainDirectory`: the one owner of a chain's run directory.

Every path of a run, its lock, its manifest, the checksums of its models,
its backups and its cleanup live here; the runner asks, this module writes.

```
DIRECTORY/
  .kdtrain.lock          the writer's lock (holds its PID)
  run.json               format, configuration, and the manifest: the names
                         kdtrain may write here (--overwrite removes only those)
  config.toml            the command line's settings
  gen-K/model.keras      generation K, once finished (gen-0 is the teacher)
  gen-K/record.json      its record: SHA-256 of model.keras, its teacher and
                         that teacher's SHA-256, history, evaluation
  gen-K/backup/epoch-N/  the last two epoch backups while K trains
  gen-K/cache/           its teacher's outputs while K trains
  gen-ensemble/          with distill_ensemble, the student distilled from
                         the ensemble of gen-1..gen-N, laid out like gen-K;
                         its record names every member and its SHA-256
  results.json           the finished chain: records and table; written once
                         complete, never replaced by an unfinished version
  logs/                  TensorBoard
  report.md, report.png  kdtrain report
  tradeoff.json          kdtrain evaluate: each model's size, MACs and speed
```

A generation is finished when its `record.json` exists and `model.keras`
has the SHA-256 recorded there; it is current when its teacher is the
finished generation (with the same SHA-256) that taught it. The student
distilled from the ensemble is current when every generation 1..N is, with
the SHA-256 its record names.
"""

import os
import re
import warnings

from kdtrain.callbacks.names import DISTILLED_ENSEMBLE_NAME
from kdtrain.callbacks.names import DistilledEnsembleIndex
from kdtrain.callbacks.names import generation_name as generation_dir_name
from kdtrain.callbacks.names import is_distilled_ensemble
from kdtrain import files
from kdtrain.chain.errors import ChainWarning
from kdtrain.chain.errors import ConfigurationMismatch
from kdtrain.chain.errors import RunDirectoryError
from kdtrain.chain.lock import LOCK_FILE
from kdtrain.chain.lock import DirectoryLock
from kdtrain.faults import fault_point

FORMAT = 2
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.toml"
LOGS_DIR = "logs"
# What the commands reading a finished run write beside it.
REPORT_FILES = ("report.md", "report.png", "tradeoff.json")
MODEL_FILE = "model.keras"
RECORD_FILE = "record.json"
BACKUP_DIR = "backup"
CACHE_DIR = "cache"
_WORKER = re.compile(r"^worker-\d+$")
# A model's folder: a generation's, or the distilled ensemble's.
_MODEL_DIR = re.compile(r"^gen-(\d+|ensemble)$")
# What a manifest may list: the only names kdtrain writes at the top level.
_OWN_NAME = re.compile(
    r"^(\.kdtrain\.lock|run\.json|results\.json|config\.toml|logs"
    r"|report\.(md|png)|tradeoff\.json|gen-\d+|gen-ensemble|worker-\d+)$"
)


def worker_directory(directory, strategy=None):
    """Where this process writes a chain: non-chief workers get their own.

    Args:
        directory: The chain's directory, or None.
        strategy: The `tf.distribute.Strategy` of the run, or None.

    Returns:
        `directory` for a single process or the chief of a multi-worker run,
        else `directory/worker-K` (K: the task index).
    """
    from kdtrain.distribute import is_multi_worker

    if directory is None:
        return None
    directory = os.fspath(directory)
    if not is_multi_worker(strategy) or strategy.extended.should_checkpoint:
        return directory
    return os.path.join(
        directory, f"worker-{strategy.cluster_resolver.task_id}"
    )


def _listing(names, limit=12):
    shown = sorted(names)[:limit]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


class ChainDirectory:
    """The files of one chain's run directory, and the only code writing them.

    Args:
        path: The run directory.
        workers: The number of workers of a multi-worker run whose chief
            writes this directory (each other worker writes `worker-K/`).

    Example:

    ```python
    directory = ChainDirectory("runs/ban")
    with directory.lock:
        resumed = directory.claim(config, generations=3)
    ```
    """

    def __init__(self, path, workers=1):
        self.path = os.path.abspath(os.fspath(path))
        self.workers = int(workers)
        self.lock = DirectoryLock(self.path)

    @classmethod
    def for_run(cls, directory, strategy=None):
        """The directory a run writes (None without one), for its strategy."""
        from kdtrain.distribute import is_multi_worker

        if directory is None:
            return None
        workers = 1
        if is_multi_worker(strategy):
            workers = strategy.cluster_resolver.cluster_spec().num_tasks(
                "worker"
            )
        return cls(directory, workers=workers)

    # Paths ------------------------------------------------------------------

    def file(self, *parts):
        """A path inside the directory."""
        return os.path.join(self.path, *parts)

    def generation_dir(self, generation):
        return self.file(generation_dir_name(generation))

    def model_path(self, generation):
        return self.file(generation_dir_name(generation), MODEL_FILE)

    def record_path(self, generation):
        return self.file(generation_dir_name(generation), RECORD_FILE)

    def backup_dir(self, generation):
        return self.file(generation_dir_name(generation), BACKUP_DIR)

    def cache_dir(self, generation):
        return self.file(generation_dir_name(generation), CACHE_DIR)

    @property
    def logs_dir(self):
        return self.file(LOGS_DIR)

    @property
    def results_path(self):
        return self.file(RESULTS_FILE)

    @property
    def config_path(self):
        return self.file(CONFIG_FILE)

    def relative(self, path):
        """`path` as shown in messages: relative to the run directory."""
        return os.path.relpath(path, self.path)

    # The manifest and the claim ------------------------------------------

    def manifest(self, generations, distilled_ensemble=False):
        """The top-level names a chain of `generations` may write here
        (`gen-ensemble` too with `distilled_ensemble`)."""
        names = {LOCK_FILE, RUN_FILE, RESULTS_FILE, CONFIG_FILE, LOGS_DIR,
                 *REPORT_FILES}
        names |= {generation_dir_name(k) for k in range(generations + 1)}
        if distilled_ensemble:
            names.add(DISTILLED_ENSEMBLE_NAME)
        names |= {f"worker-{k}" for k in range(1, self.workers)}
        return sorted(names)

    def read_run(self):
        """`run.json` (format, configuration, manifest), or None."""
        path = self.file(RUN_FILE)
        if not os.path.exists(path):
            return None
        run = self._read(path)
        if not isinstance(run, dict) or run.get("format") != FORMAT:
            raise RunDirectoryError(
                f"{path} was not written by this version of kdtrain "
                f"(format {run.get('format') if isinstance(run, dict) else '?'}"
                f", expected {FORMAT}). Nothing was changed; use {{directory}}.",
                self.path,
            )
        return run

    def claim(self, config, generations, overwrite=False,
              distilled_ensemble=False):
        """Makes the directory this chain's; returns whether it resumes.

        A directory with this configuration is resumed. An empty one (or a
        new one) is claimed: `run.json` records the configuration and the
        manifest (with `gen-ensemble` when `distilled_ensemble`). A
        directory of another configuration is refused, or with `overwrite`
        cleared of the files its manifest lists. Anything
        kdtrain did not write is never touched. The lock must be held.

        Raises:
            ConfigurationMismatch: Another configuration, without overwrite.
            RunDirectoryError: Files that are not kdtrain's.
        """
        run = self.read_run()
        from kdtrain.chain.config import same_configuration

        if run is not None and same_configuration(run.get("config"), config):
            self.remove_temporaries()
            return True
        if run is None:
            self.refuse_foreign()
        elif not overwrite:
            from kdtrain.chain.config import describe_differences

            raise ConfigurationMismatch(
                f"The directory {self.path} holds a chain made by a "
                "different configuration:\n"
                + "\n".join(describe_differences(run.get("config") or {},
                                                 config))
                + "\nNothing was changed. Use {directory}, or pass "
                "{overwrite} to clear it and start afresh.",
                self.path,
            )
        else:
            self._clear(run)
        self.remove_temporaries()
        files.write_json_atomically(self.file(RUN_FILE), {
            "format": FORMAT,
            "config": config,
            "manifest": self.manifest(generations, distilled_ensemble),
        })
        return False

    def refuse_foreign(self):
        """Refuses a directory that holds files but no kdtrain run.

        Reads only: callers run it before taking the lock too, so that a
        directory that is not kdtrain's is left exactly as it was.

        Raises:
            RunDirectoryError: Listing what kdtrain did not write.
        """
        if not os.path.isdir(self.path) or os.path.exists(
            self.file(RUN_FILE)
        ):
            return
        foreign = self._foreign(set())
        if foreign:
            raise RunDirectoryError(
                f"The directory {self.path} holds files kdtrain did not "
                f"write: {_listing(foreign)}. A run starts in an empty "
                "directory (or resumes its own). Nothing was changed; "
                "move them away or use {directory}.",
                self.path,
            )

    def _foreign(self, manifest):
        names = set(os.listdir(self.path)) - set(manifest) - {LOCK_FILE}
        if self.workers > 1:
            names = {n for n in names if not _WORKER.match(n)}
        return {n for n in names if not files.is_temporary(n)}

    def _clear(self, run):
        # A run's own reports, also where its manifest predates one of them.
        manifest = set(run.get("manifest") or ()) | set(REPORT_FILES)
        strange = sorted(n for n in manifest if not _OWN_NAME.match(n))
        if strange:
            raise RunDirectoryError(
                f"{self.file(RUN_FILE)} lists names kdtrain never writes "
                f"({_listing(strange)}): it was changed by hand. Nothing was "
                "changed; clear the directory yourself or use {directory}.",
                self.path,
            )
        foreign = self._foreign(manifest)
        if foreign:
            raise RunDirectoryError(
                f"Overwriting {self.path} would remove only what kdtrain "
                f"wrote there (listed in {RUN_FILE}), but it also holds "
                f"{_listing(foreign)}. Nothing was changed; move those away "
                "or use {directory}.",
                self.path,
            )
        # The results and the generations go first, in discard order, and
        # run.json last: a crash midway leaves a run still known as
        # kdtrain's, which the same command clears again.
        generations = [int(n[4:]) for n in manifest
                       if re.fullmatch(r"gen-\d+", n)]
        self.discard_generations(0, max(generations, default=-1))
        for name in sorted(manifest - {LOCK_FILE, RUN_FILE, RESULTS_FILE}):
            files.remove(self.file(name))

    def remove_temporaries(self):
        """Removes the temporary files a killed writer left behind.

        Only where kdtrain writes: the top level and the generations'
        folders (not foreign folders, nor other workers' directories).
        """
        for name in os.listdir(self.path):
            path = self.file(name)
            if files.is_temporary(name):
                files.remove(path)
            elif _MODEL_DIR.match(name) and os.path.isdir(path):
                for root, folders, names in os.walk(path):
                    for entry in folders + names:
                        if files.is_temporary(entry):
                            files.remove(os.path.join(root, entry))
                    folders[:] = [f for f in folders
                                  if not files.is_temporary(f)]

    def remove_scratch(self, generation):
        """Removes a finished generation's backups and cache, if left."""
        files.remove(self.backup_dir(generation))
        files.remove(self.cache_dir(generation))

    # Finished generations ----------------------------------------------------

    def _read(self, path):
        try:
            return files.read_json(path)
        except files.DamagedFileError as error:
            raise RunDirectoryError(
                f"{error} Nothing was changed; restore the file, or use "
                "{directory}.",
                self.path,
            ) from None

    def read_record(self, generation):
        """`gen-K/record.json`, or None when K has not finished."""
        path = self.record_path(generation)
        if not os.path.exists(path):
            return None
        try:
            return files.read_json(path)
        except files.DamagedFileError as error:
            raise RunDirectoryError(
                f"{error} Nothing was changed; restore the file, or pass "
                "{retrain_from} to train that generation and the later ones "
                "again.",
                self.path,
                generation=generation,
            ) from None

    def finished_records(self, first, last, retrain_from=None,
                         lenient=False, distilled_ensemble=False):
        """The records of the finished, current generations `first..last`.

        Generation K counts when its record and its model file agree
        (SHA-256) and its teacher is the finished generation that taught
        it. A finished generation whose model is missing or changed, and
        any generation taught by a model that is no longer there, is
        refused, naming them, unless `retrain_from` discards it: then it
        and every later generation are deleted and trained again.

        Args:
            first, last: The generations of the chain.
            retrain_from: Optional generation to discard with every later
                one (see `retrain`); `last + 1` discards only the student
                distilled from the ensemble.
            lenient: Whether a damaged `results.json` is ignored with a
                warning (it is rebuilt at the end) instead of refused.
            distilled_ensemble: Whether the chain ends with a student
                distilled from the ensemble of generations 1..last
                (`gen-ensemble`), current when they all are, as its record
                names them.

        Returns:
            A dict from generation to its record; the distilled student's
            under its `DistilledEnsembleIndex` (`last + 1`).

        Raises:
            RunDirectoryError: Missing, changed or stale generations.
        """
        if retrain_from is not None:
            self.retrain(first, retrain_from, last, lenient)
        return self._current_records(first, last, lenient,
                                     distilled_ensemble)

    def retrain(self, first, start, last, lenient=False):
        """Discards generations `start..last` to train them again.

        The generations before `start` are checked first (a problem there
        changes nothing). The request is recorded in `run.json` before
        anything is deleted and cleared when the chain completes, so the
        same request after a crash resumes the retraining instead of
        discarding what it has trained since.
        """
        run = self.read_run()
        # Resumed, unless a crash came between finishing it and clearing
        # the request (complete results mean it finished).
        if run.get("retrain_from") == start and (
            self.read_results(lenient) or {}
        ).get("complete") is not True:
            return
        self._current_records(first, min(start - 1, last), lenient)
        files.write_json_atomically(self.file(RUN_FILE),
                                    {**run, "retrain_from": start})
        self.discard_generations(start, last)

    def _current_records(self, first, last, lenient,
                         distilled_ensemble=False):
        indices = list(range(first, last + 1))
        if distilled_ensemble:
            indices.append(DistilledEnsembleIndex(last))
        known = self._known_records(indices, lenient)
        records, problems = {}, []
        for generation in indices:
            record = known.get(generation)
            if record is None:
                continue
            problem = self._model_problem(generation, record)
            teacher = (record.get("taught_by") or {}).get("generation")
            if problem is None and is_distilled_ensemble(generation):
                problem = self._stale_members(record, records, last)
            elif problem is None and teacher is not None and teacher >= first:
                taught = records.get(teacher)
                if taught is None or taught.get("sha256") != (
                    record["taught_by"].get("sha256")
                ):
                    problem = (
                        f"{generation_dir_name(generation)} was taught by "
                        f"{generation_dir_name(teacher)} as it was then, which "
                        "is no longer on disk: its training is stale"
                    )
            if problem is None:
                records[generation] = record
            else:
                problems.append((generation, problem))
        if problems:
            start = problems[0][0]
            what = ("the student distilled from the ensemble"
                    if is_distilled_ensemble(start)
                    else f"generation {start} and every later one")
            raise RunDirectoryError(
                f"The run in {self.path} cannot be resumed as it is:\n"
                + "\n".join(f"  {text}." for _, text in problems)
                + f"\nNothing was changed. To train {what} again, pass "
                "{retrain_from}.",
                self.path,
                generation=start,
            )
        return records

    def _known_records(self, indices, lenient):
        """Records of gen-K/record.json, else of a finished results.json."""
        results = self.read_results(lenient) or {}
        by_name = {
            record.get("generation"): record
            for record in (results.get("generations") or {}).values()
            if isinstance(record, dict)
        }
        known = {}
        for generation in indices:
            record = self.read_record(generation) or by_name.get(generation)
            if record is not None:
                known[generation] = record
        return known

    @staticmethod
    def _stale_members(record, records, last):
        """Why the distilled student's record is stale, or None when every
        generation 1..last is finished with the SHA-256 it names."""
        members = (record.get("taught_by") or {}).get("members") or []
        taught = {m.get("generation"): m.get("sha256") for m in members
                  if isinstance(m, dict)}
        current = {k: (records.get(k) or {}).get("sha256")
                   for k in range(1, last + 1)}
        if taught == current and None not in current.values():
            return None
        return (f"{DISTILLED_ENSEMBLE_NAME} was distilled from the ensemble "
                f"of gen-1..gen-{last} as they were then, which is no longer "
                "on disk: its training is stale")

    def _model_problem(self, generation, record):
        path = self.model_path(generation)
        name = self.relative(path)
        what = ("the student distilled from the ensemble"
                if is_distilled_ensemble(generation)
                else f"generation {generation}")
        if not os.path.exists(path):
            return f"{name} is missing, though {what} finished"
        actual = files.sha256_file(path)
        if actual != record.get("sha256"):
            return (f"{name} has changed since {what} "
                    f"finished (SHA-256 {actual[:12]}... on disk, "
                    f"{str(record.get('sha256'))[:12]}... recorded)")
        return None

    def discard_generations(self, start, last):
        """Deletes generations `start..last` and the results built on them.

        The results go first, then the student distilled from the ensemble
        (when the manifest lists it: it depends on every generation), then
        the generations from the last down, so a crash midway never leaves
        a model whose teacher is gone.
        """
        files.remove(self.results_path)
        run = self.read_run() or {}
        if DISTILLED_ENSEMBLE_NAME in (run.get("manifest") or ()):
            files.remove(self.file(DISTILLED_ENSEMBLE_NAME))
        for generation in range(last, start - 1, -1):
            files.remove(self.generation_dir(generation))

    def load_model(self, generation, record):
        """Loads a finished generation's model, checked against its record.

        Raises:
            RunDirectoryError: The file changed, or cannot be loaded in
                safe mode.
        """
        path = self.model_path(generation)
        problem = self._model_problem(generation, record)
        if problem is not None:
            raise RunDirectoryError(
                f"{problem}. Nothing was changed. To train it and every "
                "later generation again, pass {retrain_from}.",
                self.path,
                generation=generation,
            )
        try:
            return files.load_model_file(path)
        except ValueError as error:
            raise RunDirectoryError(
                f"{error} To train it and every later generation again, "
                "pass {retrain_from}.",
                self.path,
                generation=generation,
            ) from None

    def commit_generation(self, generation, model, record):
        """Saves a finished generation: its model, then its record.

        The model goes first, so a record always describes a complete file;
        the record (with the file's SHA-256) makes the generation finished.
        Its backups and cache go last.

        Returns:
            The record as written.
        """
        self.lock.verify()
        name = generation_dir_name(generation)
        os.makedirs(self.generation_dir(generation), exist_ok=True)
        path = self.model_path(generation)
        files.save_model_atomically(model, path, fault=f"{name}/model.save")
        fault_point(f"{name}/model.saved")
        record = {**record, "generation": int(generation),
                  "path": self.relative(path),
                  "sha256": files.sha256_file(path)}
        files.write_json_atomically(self.record_path(generation), record)
        fault_point(f"{name}/record.written")
        self.remove_scratch(generation)
        return record

    # Results -----------------------------------------------------------------

    def read_results(self, lenient=False):
        """`results.json`, or None when the chain has not finished.

        Args:
            lenient: Whether a damaged file counts as absent (with a
                warning: it is derived from the records and rebuilt)
                instead of being refused.
        """
        path = self.results_path
        if not os.path.exists(path):
            return None
        if not lenient:
            return self._read(path)
        try:
            return files.read_json(path)
        except files.DamagedFileError as error:
            warnings.warn(f"{error} It is rebuilt from the generations' "
                          "records.", ChainWarning, stacklevel=2)
            return None

    def write_results(self, results):
        """Writes a finished chain's results (never an unfinished version)."""
        if not results.get("complete"):
            raise ValueError("results.json is written only once complete.")
        if os.path.exists(self.results_path):
            with open(self.results_path) as file:
                if file.read() == files.to_json(results):
                    return
        self.lock.verify()
        files.write_json_atomically(
            self.results_path, results, fault="results.write"
        )
        run = self.read_run()
        if run and "retrain_from" in run:  # The retraining is complete.
            del run["retrain_from"]
            files.write_json_atomically(self.file(RUN_FILE), run)

    def write_config_text(self, text):
        """Writes `config.toml` (the command line's settings)."""
        files.write_text_atomically(self.config_path, text)
