"""Callbacks of a generation's training: the chain's own, the user's copies."""

import copy
import math
import os
import time

import keras

from kdtrain.chain_errors import TrainingDiverged
from kdtrain.results import model_label
from kdtrain.results import model_name
from kdtrain.runfiles import read_json
from kdtrain.runfiles import write_json_atomically


def _to_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def float_logs(logs):
    """The values of `logs` that are numbers, as floats."""
    out = {}
    for key, value in (logs or {}).items():
        value = _to_float(value)
        if value is not None:
            out[key] = value
    return out


class EpochRecord(keras.callbacks.Callback):
    """Keeps every epoch's logs and the elapsed time, on disk if given a path.

    A run resumed by `BackupAndRestore` starts at a later epoch: the record
    keeps the epochs before it, so the history stays complete.
    """

    def __init__(self, path=None):
        super().__init__()
        self.path = path
        self.entries = []
        if path is not None and os.path.exists(path):
            self.entries = read_json(path)
        self._start = None
        self._previous = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._truncated = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._truncated:
            self.entries = self.entries[:epoch]
            self._previous = self.entries[-1]["elapsed"] if self.entries else 0.0
            self._truncated = True

    def elapsed(self):
        if self._start is None:
            return self._previous
        return self._previous + time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        self.entries.append(
            {"epoch": epoch, "logs": float_logs(logs), "elapsed": self.elapsed()}
        )
        if self.path is not None:
            write_json_atomically(self.path, self.entries)

    def history(self):
        """The logs as `History.history`: a list of values per name."""
        history = {}
        for entry in self.entries:
            for key, value in entry["logs"].items():
                history.setdefault(key, []).append(value)
        return history


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDiverged` as soon as a loss is NaN or infinite.

    Raising inside `fit` (rather than stopping at the epoch's end) keeps
    `BackupAndRestore` from saving the diverged weights.
    """

    def __init__(self, generation, directory):
        super().__init__()
        self.generation = generation
        self.directory = directory
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs, where):
        for key, value in (logs or {}).items():
            if not key.endswith("loss"):
                continue
            value = _to_float(value)
            if value is not None and not math.isfinite(value):
                saved = (
                    f" Finished generations are saved in {self.directory!r} "
                    "(gen-K/model.keras). Running the chain again resumes "
                    f"{model_name(self.generation)} from its last good epoch "
                    "with the same settings; to change them (a lower "
                    "learning rate), start a chain in a new directory with "
                    "the last finished generation as its `teacher`."
                    if self.directory
                    else ""
                )
                raise TrainingDiverged(
                    f"Generation {self.generation} "
                    f"({model_label(self.generation)}) diverged: `{key}` "
                    f"became {value} {where}. Lower the learning rate or "
                    f"check the data.{saved}",
                    generation=self.generation,
                    directory=self.directory,
                )

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"at epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"at the end of epoch {epoch + 1}")


def copy_callbacks(callbacks, generation):
    """Fresh copies of the user's callbacks for one generation.

    Callbacks hold state (EarlyStopping's best weights and patience count),
    so each generation gets deep copies of the callbacks as passed, never
    the instances another generation used.

    Args:
        callbacks: None, a list of callbacks, or a function of the
            generation returning a list.
        generation: The generation the copies are for.

    Returns:
        A list of callbacks.
    """
    if callbacks is None:
        return []
    if callable(callbacks) and not isinstance(callbacks, (list, tuple)):
        return list(callbacks(generation) or [])
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    memo = {}
    for callback in callbacks:
        # A callback used before holds its model: copy it, not the model.
        model = getattr(callback, "_model", None)
        if model is not None:
            memo[id(model)] = None
    try:
        # One copy of the list keeps references between callbacks.
        return copy.deepcopy(callbacks, memo)
    except Exception:  # noqa: BLE001 - try one by one below
        pass
    copies = []
    for callback in callbacks:
        try:
            copies.append(copy.deepcopy(callback, dict(memo)))
            continue
        except Exception as error:  # noqa: BLE001 - any copying failure
            failure = error
        try:
            copies.append(type(callback).from_config(callback.get_config()))
        except Exception:  # noqa: BLE001
            raise TypeError(
                f"Cannot copy the callback {callback!r} for generation "
                f"{generation} ({failure}). Each generation needs its own "
                "callbacks; pass `callbacks` as a function of the generation "
                "that returns fresh ones."
            ) from failure
    return copies
