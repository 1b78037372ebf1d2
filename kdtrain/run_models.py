"""The models of a finished run, by the names its table gives them.

A finished run's `results.json` lists its models (`teacher`, `gen-K`...)
with their files and SHA-256, and its table names every model and ensemble.
`RunModels` answers, without TensorFlow, which models a run has, which one
a name such as `BAN-2`, `best` or `ensemble` means and which files it is
made of; `load` then loads it, checked against its record, as a
`keras.Model` (a `GenerationEnsemble` for an ensemble).

Example:

```python
models = RunModels("runs/ban-digits-wrn-16-1")
name, reason = models.resolve("best")  # e.g. "gen-2", "the student ..."
student, output_kind = models.load(name)
```
"""

import os
import re

from kdtrain import files
from kdtrain.options import UsageError
from kdtrain.options import read_run_config
from kdtrain.report import is_single_model

ENSEMBLES = ("ensemble", "ensemble_with_teacher")


def _key(text):
    return re.sub(r"[\s_+\-]+", "_", str(text).strip().lower())


def _generation(name):
    """K of `gen-K`, or None (the teacher, `gen-ensemble`)."""
    match = re.fullmatch(r"gen-(\d+)", name)
    return int(match.group(1)) if match else None


class RunModels:
    """A finished run's models and ensembles, by name.

    Args:
        directory: The run's directory.

    Raises:
        UsageError: No finished run there.
    """

    def __init__(self, directory):
        self.path = os.path.abspath(os.fspath(directory))
        self.settings = read_run_config(self.path)
        try:
            results = files.read_json(os.path.join(self.path,
                                                   "results.json"))
        except FileNotFoundError:
            results = None
        except files.DamagedFileError as error:
            raise UsageError(str(error)) from None
        if not isinstance(results, dict) or not results.get("complete") or (
            not results.get("table")
        ):
            raise UsageError(
                f"The run in {self.path} is not finished (no complete "
                "results.json). Finish it first: kdtrain "
                f"{self.settings.command} --config "
                f"{os.path.join(self.path, 'config.toml')}")
        self.results = results
        self.records = results.get("generations") or {}
        self.table = results["table"]

    @property
    def names(self):
        """Every model and ensemble of the table, in its order."""
        return list(dict.fromkeys(row["name"] for row in self.table))

    def label(self, name):
        """The table's header of `name` (`"BAN-2"`, `"Ensemble"`...)."""
        return next(row["label"] for row in self.table if row["name"] == name)

    def students(self):
        """The single models other than the teacher."""
        return [n for n in self.names if is_single_model(n) and n != "teacher"]

    def members(self, name):
        """The single models `name` is made of (itself for a single one)."""
        if name == "ensemble":
            return [n for n in self.names if _generation(n) is not None]
        if name == "ensemble_with_teacher":
            return ["teacher"] + self.members("ensemble")
        return [name]

    def best(self):
        """The student with the highest validation accuracy (the lower
        validation loss breaks a tie, then the earlier student).

        Returns:
            `(name, reason)`: the reason gives its validation accuracy
            (and loss, where it broke a tie).

        Raises:
            UsageError: The run has no validation split.
        """
        rows = {row["name"]: row for row in self.table
                if row["split"] == "validation"
                and row.get("accuracy") is not None}
        candidates = [n for n in self.students() if n in rows]
        if not candidates:
            raise UsageError(
                "--model best picks the student with the highest validation "
                f"accuracy, and the run in {self.path} has no validation "
                "split (--validation-split 0). Name the model instead, e.g. "
                f"--model {self.label(self.students()[-1])}.")
        best = min(candidates, key=lambda n: (
            -rows[n]["accuracy"], rows[n].get("loss", 0.0),
            candidates.index(n)))
        accuracy = rows[best]["accuracy"]
        reason = ("the student with the highest validation accuracy, "
                  f"{accuracy:.4f}")
        tied = [n for n in candidates if rows[n]["accuracy"] == accuracy]
        if len(tied) > 1 and rows[best].get("loss") is not None:
            reason += (f", of {len(tied)} tied the one with the lowest "
                       f"validation loss, {rows[best]['loss']:.4f}")
        return best, reason

    def resolve(self, text):
        """The table name that `--model TEXT` means, and why.

        Accepts a table name (`gen-2`, `ensemble_with_teacher`), a label
        (`BAN-2`, `Ensemble + teacher`), in any case and with `-`, `_`,
        `+` or spaces alike, `best` and, in a `distill` run, `student`.

        Returns:
            `(name, reason)`: the reason says why `best` chose it, else "".

        Raises:
            UsageError: No such model in the run, listing those it has.
        """
        wanted = _key(text)
        if wanted == "best":
            return self.best()
        if wanted == "student" and self.settings.command == "distill":
            return "gen-1", ""
        for name in self.names:
            if wanted in (_key(name), _key(self.label(name))):
                return name, ""
        known = [self.label(n) for n in self.names] + ["best"]
        raise UsageError(
            f"--model {text}: the run in {self.path} has no such model. "
            f"Choose one of: {', '.join(known)}.")

    def files(self, name):
        """The model files of `name` (an ensemble's are its members')."""
        paths = []
        for member in self.members(name):
            record = self.records.get(member)
            if record is None and member == "teacher" and (
                self.settings.teacher
            ):
                paths.append(self.settings.teacher)  # given to the run
            elif record is None:
                raise UsageError(f"{self.path}/results.json has no record "
                                 f"of {member}: it is damaged.")
            else:
                paths.append(os.path.join(self.path, record["path"]))
        return paths

    def load(self, name, cache=None):
        """Loads `name` as a `keras.Model`, each file checked (SHA-256).

        Args:
            name: A table name (`resolve` gives one).
            cache: Optional dict of single models already loaded, by name;
                filled as members are loaded.

        Returns:
            `(model, output_kind)`: the `keras.Model` (a
            `GenerationEnsemble` of the members of an ensemble) and what
            it emits (`"logits"`, `"probabilities"`, or `"auto"` for a
            teacher given to the run).

        Raises:
            UsageError: A model file has changed since the run recorded it.
        """
        from kdtrain.ensemble import GenerationEnsemble

        cache = {} if cache is None else cache
        loaded = []
        for member in self.members(name):
            if member not in cache:
                cache[member] = self._load_single(member)
            loaded.append(cache[member])
        if name not in ENSEMBLES:
            return loaded[0]
        ensemble = GenerationEnsemble([m for m, _ in loaded],
                                      outputs=[k for _, k in loaded],
                                      name=name)
        return ensemble, "probabilities"

    def _load_single(self, name):
        (path,) = self.files(name)
        record = self.records.get(name)
        if record is None:  # the teacher given to the run
            return given_teacher(path, self.results), "auto"
        if not os.path.isfile(path) or (
            files.sha256_file(path) != record.get("sha256")
        ):
            raise UsageError(
                f"{path} is missing or has changed since the run finished "
                "(its SHA-256 is not the one results.json records): it is "
                "not the model the run evaluated.")
        try:
            return files.load_model_file(path), record["output_kind"]
        except ValueError as error:
            raise UsageError(str(error)) from None


def given_teacher(path, results):
    """A run's `--teacher` file, checked to be the one that taught it.

    Args:
        path: The file the run was given.
        results: The run's `results.json`.

    Raises:
        UsageError: The file cannot be loaded, or its weights are not the
            ones the run recorded.
    """
    from kdtrain.cache import weights_fingerprint

    try:
        teacher = files.load_model_file(path, "--teacher")
    except ValueError as error:
        raise UsageError(str(error)) from None
    recorded = (results["config"].get("teacher") or {}).get("weights_sha256")
    if weights_fingerprint(teacher) != recorded:
        raise UsageError(
            f"--teacher {path} has changed since the run: its weights are "
            "not the ones that taught generation 1.")
    return teacher
