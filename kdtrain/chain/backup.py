"""`GenerationBackup`: epoch backups that a crash can never strand.

Like `keras.callbacks.BackupAndRestore`, but a new backup never overwrites
the last good one: epoch N's backup is written to a temporary folder beside
it, checksummed, flushed and switched in by rename, and the one before it is
kept until then. A kill or a full disk during the write leaves the previous
backup untouched. Restoring checks every file's SHA-256 first and falls
back to the previous backup (or to the generation's first epoch) with a
warning naming the file, never loading a damaged one.

A backup holds what the next epochs depend on: the model's variables (its
weights and random-seed states, without those of frozen models such as a
teacher) and the optimizer's, as one NumPy file listing each variable's
shape and dtype, the number of epochs done, whether training was stopped, and the
state of stateful callbacks (`EarlyStopping`, `ReduceLROnPlateau`, and any
object with `get_state()` / `set_state(state)`), so a resumed `fit`
continues exactly as the uninterrupted one would have.
"""

import json
import os
import re
import warnings

import keras
import numpy as np

from kdtrain import files
from kdtrain.chain.errors import ChainWarning
from kdtrain.faults import fault_point

WEIGHTS_FILE = "variables.npz"
ARRAYS_FILE = "callbacks.npz"
STATE_FILE = "state.json"
_BACKUP = re.compile(r"^epoch-(\d+)$")

# Keras callbacks whose attributes decide the coming epochs, and which
# on_train_begin resets: those attributes are backed up.
_KERAS_STATE = (
    (keras.callbacks.EarlyStopping,
     ("wait", "stopped_epoch", "best", "best_epoch"), "best_weights"),
    (keras.callbacks.ReduceLROnPlateau,
     ("wait", "best", "cooldown_counter"), None),
)


def _state_value(value):
    """A callback's state value as JSON; refuses what would not read back."""
    if hasattr(value, "__array__") or hasattr(value, "numpy"):
        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return array.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(
        f"A backup cannot keep the callback state value {value!r} "
        f"({type(value).__name__}): give get_state() JSON values."
    )


def _state_of(obj):
    """`(json_state, arrays or None)` of a stateful object, or None."""
    if hasattr(obj, "get_state") and hasattr(obj, "set_state"):
        return obj.get_state(), None
    for kind, attributes, weights in _KERAS_STATE:
        if isinstance(obj, kind):
            state = {name: getattr(obj, name) for name in attributes}
            return state, getattr(obj, weights) if weights else None
    return None


def _restore(obj, state, arrays):
    if hasattr(obj, "get_state") and hasattr(obj, "set_state"):
        obj.set_state(state)
        return
    for kind, attributes, weights in _KERAS_STATE:
        if isinstance(obj, kind):
            for name in attributes:
                setattr(obj, name, state[name])
            if weights:
                setattr(obj, weights, arrays)


def _encoded(array):
    """`array` as `.npz` keeps it exactly: an extension dtype (bfloat16,
    float8...), which NumPy would store as opaque void, as its raw bytes."""
    array = np.asarray(array)
    if array.dtype.kind in "biufc":
        return array
    return array.view(f"uint{8 * array.dtype.itemsize}")


def _decoded(array, dtype):
    """The inverse of `_encoded`, given the array's dtype name."""
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    return array if array.dtype == dtype else array.view(dtype)


def _describe(variables):
    """Each variable's shape and dtype, to refuse a backup of another model."""
    return [[list(v.shape), keras.backend.standardize_dtype(v.dtype)]
            for v in variables]


def stateful(objects):
    """The objects of `objects` whose state a backup keeps."""
    return [
        obj for obj in objects
        if (hasattr(obj, "get_state") and hasattr(obj, "set_state"))
        or isinstance(obj, tuple(kind for kind, _, _ in _KERAS_STATE))
    ]


class GenerationBackup(keras.callbacks.Callback):
    """Backs up training at every epoch's end and resumes from the backup.

    Put it last in the callback list: it restores after the other
    callbacks have reset themselves in `on_train_begin`, and saves after
    they have updated themselves in `on_epoch_end`.

    Args:
        backup_dir: The folder of the backups (`epoch-N/` inside), used by
            this training only.
        stateful_objects: Callbacks (or other objects) whose state is saved
            with the weights; see `stateful`.
        label: How messages name the training, e.g. `"generation 2"`.
        fault_prefix: Prefix of this backup's fault points (`"gen-2"`).
        frozen: Models inside the trained one whose variables never change
            (a Distiller's teacher): left out of the backups.

    Example:

    ```python
    stop = keras.callbacks.EarlyStopping(patience=3)
    backup = GenerationBackup("run/backup", stateful_objects=[stop])
    # After a crash, the same call resumes at the last backed-up epoch.
    model.fit(x, y, epochs=20, callbacks=[stop, backup])
    ```
    """

    def __init__(self, backup_dir, stateful_objects=(), label="training",
                 fault_prefix=None, frozen=()):
        super().__init__()
        self.frozen = list(frozen)
        self.backup_dir = os.fspath(backup_dir)
        self.stateful_objects = list(stateful_objects)
        self.label = label
        self.fault_prefix = fault_prefix
        self.restored_epochs = 0

    # Restoring ---------------------------------------------------------------

    def backups(self):
        """The backup folders, newest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = [
            (int(match.group(1)), name)
            for name in os.listdir(self.backup_dir)
            if (match := _BACKUP.match(name))
        ]
        return [os.path.join(self.backup_dir, name)
                for _, name in sorted(found, reverse=True)]

    def _check(self, folder):
        """The backup's state, after checking every file's SHA-256."""
        state = files.read_json(os.path.join(folder, STATE_FILE))
        if WEIGHTS_FILE not in state["sha256"]:
            raise ValueError(f"{folder} lists no {WEIGHTS_FILE}")
        for name, digest in state["sha256"].items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise ValueError(f"{path} is missing")
            if files.sha256_file(path) != digest:
                raise ValueError(f"{path} does not match its checksum")
        if len(state["callbacks"]) != len(self.stateful_objects) or any(
            entry["class"] != type(obj).__name__
            for entry, obj in zip(state["callbacks"], self.stateful_objects)
        ):
            raise ValueError(
                f"{folder} was made with other stateful callbacks"
            )
        return state

    def on_train_begin(self, logs=None):
        # Keras starts at `_initial_epoch` when set, and never clears it:
        # a model trained again (a reused Distiller) must not inherit it.
        self.model._initial_epoch = None
        skipped = []
        fresh = None
        for folder in self.backups():
            try:
                state = self._check(folder)
                fresh = fresh or self._snapshot()
                self._load(folder, state)
            except Exception as error:  # noqa: BLE001 - any unusable backup
                if fresh is not None:
                    self._restore_snapshot(fresh)
                skipped.append(folder)
                warnings.warn(
                    f"The backup {folder} of {self.label} cannot be used "
                    f"({error}); trying the one before it.",
                    ChainWarning, stacklevel=2,
                )
                continue
            for newer in skipped:
                files.remove(newer)
            return
        if skipped:
            warnings.warn(
                f"No backup of {self.label} could be used "
                f"({', '.join(skipped)}): it starts again from its first "
                "epoch.",
                ChainWarning, stacklevel=2,
            )
            for folder in skipped:
                files.remove(folder)

    def _variables(self):
        """What a backup holds: the model's variables (but the frozen
        models') and the optimizer's, in a fixed order."""
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        skipped = {id(v) for frozen in self.frozen for v in frozen.variables}
        variables = [v for v in model.variables if id(v) not in skipped]
        if model.optimizer is not None:
            variables += list(model.optimizer.variables)
        return variables

    def _snapshot(self):
        """The model's and optimizer's values before a restore is tried."""
        return [(v, keras.ops.convert_to_numpy(v)) for v in self._variables()]

    @staticmethod
    def _restore_snapshot(snapshot):
        """Undoes a restore that failed halfway."""
        for variable, value in snapshot:
            variable.assign(value)

    def _load(self, folder, state):
        model = self.model
        variables = self._variables()
        if state.get("variables") != _describe(variables):
            raise ValueError(
                f"{folder} holds other variables than {self.label}'s model "
                "and optimizer (another architecture or optimizer)"
            )
        with np.load(os.path.join(folder, WEIGHTS_FILE)) as saved:
            values = [_decoded(saved[f"v{k}"], dtype) for k, (_, dtype)
                      in enumerate(state["variables"])]
        for variable, value in zip(variables, values):
            variable.assign(value)
        arrays = {}
        if ARRAYS_FILE in state["sha256"]:
            with np.load(os.path.join(folder, ARRAYS_FILE)) as saved:
                arrays = {key: saved[key] for key in saved.files}
        for index, (entry, obj) in enumerate(
            zip(state["callbacks"], self.stateful_objects)
        ):
            count = entry.get("arrays")
            values = None if count is None else [
                _decoded(arrays[f"c{index}_{k}"], dtype)
                for k, dtype in enumerate(entry["dtypes"])
            ]
            _restore(obj, entry["state"], values)
        done = int(state["epochs_done"])
        self.restored_epochs = done
        # A stopped run goes straight to on_train_end (EarlyStopping then
        # restores its best weights, as it did before the crash).
        epochs = self.params.get("epochs", done)
        model._initial_epoch = epochs if state["stopped"] else done

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None

    # Saving ------------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        final = os.path.join(self.backup_dir, f"epoch-{epoch + 1:04d}")
        os.makedirs(self.backup_dir, exist_ok=True)
        files.remove(final)  # A damaged one that a restore skipped.
        fault = self.fault_prefix and f"{self.fault_prefix}/backup.write"
        try:
            with files.replacing(final, fault=fault) as temporary:
                os.makedirs(temporary)
                self._write(temporary, epoch)
        except OSError as error:
            previous = self.backups()
            kept = (f"The previous backup ({previous[0]}) is intact"
                    if previous else "There is no earlier backup")
            message = (
                f"Could not write the backup of {self.label} after epoch "
                f"{epoch + 1} to {final}: {error.strerror or error}. {kept}; "
                "free some space and run the same command again to resume."
            )
            raise (OSError(error.errno, message) if error.errno
                   else OSError(message)) from error
        if self.fault_prefix:
            fault_point(f"{self.fault_prefix}/backup.written")
        for old in self.backups()[2:]:
            files.remove(old)

    def _write(self, folder, epoch):
        # One NumPy file instead of Keras' .weights.h5: a tenth of the time
        # per epoch, and no copy of the frozen teacher.
        variables = self._variables()
        np.savez(os.path.join(folder, WEIGHTS_FILE), **{
            f"v{k}": _encoded(keras.ops.convert_to_numpy(v))
            for k, v in enumerate(variables)
        })
        entries, arrays = [], {}
        for index, obj in enumerate(self.stateful_objects):
            state, values = _state_of(obj)
            entry = {"class": type(obj).__name__, "state": state}
            if values is not None:
                entry["arrays"] = len(values)
                entry["dtypes"] = [str(np.asarray(v).dtype) for v in values]
                for k, value in enumerate(values):
                    arrays[f"c{index}_{k}"] = _encoded(value)
            entries.append(entry)
        names = [WEIGHTS_FILE]
        if arrays:
            np.savez(os.path.join(folder, ARRAYS_FILE), **arrays)
            names.append(ARRAYS_FILE)
        state = {
            "epochs_done": epoch + 1,
            "variables": _describe(variables),
            "stopped": bool(self.model.stop_training),
            "callbacks": entries,
            "sha256": {
                name: files.sha256_file(os.path.join(folder, name))
                for name in names
            },
        }
        with open(os.path.join(folder, STATE_FILE), "w") as file:
            file.write(json.dumps(state, default=_state_value))
