"""Callbacks of a generation's training: the chain's own, the user's copies."""

import copy
import hashlib
import math
import os
import time

import keras
import tensorflow as tf

from kdtrain.callbacks.progress import TqdmProgress
from kdtrain.callbacks.tensorboard import GenerationTensorBoard

from kdtrain.chain.errors import TrainingDiverged
from kdtrain.chain.results import describe_model
from kdtrain.chain.results import model_name
from kdtrain.faults import fault_point


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


def is_chain_callback(callback):
    """Whether a callback follows the whole chain (`GenerationCallback`).

    Such a callback is shared by every generation instead of copied: it is
    meant to see all of them.
    """
    return callable(getattr(callback, "on_chain_begin", None))


class EpochRecord(keras.callbacks.Callback):
    """Keeps every epoch's logs and the training time across resumes.

    Its state travels in the generation's backup, so a resumed `fit` keeps
    the epochs trained before the crash and the history stays complete.
    """

    def __init__(self):
        super().__init__()
        self.entries = []
        self._previous = 0.0
        self._start = None

    def get_state(self):
        return {"entries": self.entries, "elapsed": self.elapsed()}

    def set_state(self, state):
        self.entries = list(state["entries"])
        self._previous = float(state["elapsed"])
        self._start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def elapsed(self):
        """Seconds of training, the epochs before a resume included."""
        if self._start is None:
            return self._previous
        return self._previous + time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        self.entries.append(
            {"epoch": epoch, "logs": float_logs(logs), "elapsed": self.elapsed()}
        )

    def history(self):
        """The logs as `History.history`: a list of values per name."""
        history = {}
        for entry in self.entries:
            for key, value in entry["logs"].items():
                history.setdefault(key, []).append(value)
        return history


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDiverged` as soon as a loss is NaN or infinite.

    Raising inside `fit` (rather than stopping at the epoch's end) keeps the
    backup, which comes after it, from saving the diverged weights.
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
                    f" {finished_generations_message(self.directory)} "
                    "Running the chain again resumes "
                    f"{model_name(self.generation)} from its last good epoch "
                    "with the same settings; to change them (a lower "
                    "learning rate), start a chain in a new directory with "
                    "the last finished generation as its `teacher`."
                    if self.directory
                    else ""
                )
                raise TrainingDiverged(
                    f"{describe_model(self.generation, capital=True)} "
                    f"diverged: `{key}` "
                    f"became {value} {where}. Lower the learning rate or "
                    f"check the data.{saved}",
                    generation=self.generation,
                    directory=self.directory,
                )

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"at epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"at the end of epoch {epoch + 1}")


def finished_generations_message(directory):
    """Where a stopped chain's finished generations are."""
    return (f"Finished generations are saved in {directory} "
            "(gen-K/model.keras).")


def derived_seed(*numbers):
    """A 63-bit seed derived from integers (stable across processes)."""
    text = ",".join(str(int(n)) for n in numbers).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def seed_generators(*objects):
    """The `keras.random.SeedGenerator`s of models and losses."""
    found = []
    for obj in objects:
        if isinstance(obj, keras.Layer):
            for layer in obj._flatten_layers(include_self=True):
                found.extend(getattr(layer, "_seed_generators", ()))
        elif hasattr(obj, "__dict__"):
            found.extend(
                value for value in vars(obj).values()
                if isinstance(value, keras.random.SeedGenerator)
            )
    return list({id(g): g for g in found}.values())


class EpochSeed(keras.callbacks.Callback):
    """Makes each epoch's randomness a function of (seed, generation, epoch).

    At every epoch's start it sets `variable`, which the runner's training
    pipelines read to order (shuffle) that epoch's samples, and resets the
    random state of `random_objects` (dropout layers, a DKPP loss): an
    epoch trained again after a crash draws exactly what it drew before.

    Args:
        variable: An int64 `tf.Variable` of shape (2,), read by the
            pipelines.
        seed: The chain's seed.
        generation: The generation trained.
        random_objects: Models and losses whose seed generators are reset.
    """

    def __init__(self, variable, seed, generation, random_objects=()):
        super().__init__()
        self.variable = variable
        self.seed = seed
        self.generation = generation
        self.random_objects = list(random_objects)

    def on_epoch_begin(self, epoch, logs=None):
        base = derived_seed(self.seed, self.generation)
        self.variable.assign([base, epoch])
        for index, generator in enumerate(seed_generators(*self.random_objects)):
            value = derived_seed(self.seed, self.generation, epoch, index)
            generator.state.assign(
                tf.constant([value % 2**31, 0], generator.state.dtype)
            )


class FaultPoints(keras.callbacks.Callback):
    """Reaches the `gen-K/train.step` fault point after every step."""

    def __init__(self, prefix):
        super().__init__()
        self.name = f"{prefix}/train.step"

    def on_train_batch_end(self, batch, logs=None):
        fault_point(self.name)


def copy_callbacks(callbacks, generation):
    """Fresh copies of the user's callbacks for one generation.

    Callbacks hold state (EarlyStopping's best weights and patience count),
    so each generation gets deep copies of the callbacks as passed, never
    the instances another generation used. Chain callbacks
    (`is_chain_callback`) are shared, not copied: they follow every
    generation.

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
    shared = {id(c) for c in callbacks if is_chain_callback(c)}
    memo = {i: c for c in callbacks for i in [id(c)] if i in shared}
    for callback in callbacks:
        # A callback used before holds its model: copy it, not the model.
        model = getattr(callback, "_model", None)
        if model is not None:
            memo[id(model)] = None
    try:
        # One copy of the list keeps references between callbacks.
        return copy.deepcopy(list(callbacks), memo)
    except Exception:  # noqa: BLE001 - try one by one below
        pass
    return [
        callback if id(callback) in shared
        else _copy_one(callback, generation, memo)
        for callback in callbacks
    ]


def _copy_one(callback, generation, memo):
    try:
        return copy.deepcopy(callback, dict(memo))
    except Exception as error:  # noqa: BLE001 - any copying failure
        failure = error
    try:
        return type(callback).from_config(callback.get_config())
    except Exception:  # noqa: BLE001
        raise TypeError(
            f"Cannot copy the callback {callback!r} for generation "
            f"{generation} ({failure}). Each generation needs its own "
            "callbacks; pass `callbacks` as a function of the generation "
            "that returns fresh ones."
        ) from failure


_MONITORS = {"tensorboard": GenerationTensorBoard, "progress": TqdmProgress}


def check_monitor(name, value, directory):
    """Checks a runner's `tensorboard` / `progress` argument."""
    if isinstance(value, _MONITORS[name]):
        return value
    for option in ("auto", True, False):
        if value is option:
            break
    else:
        raise ValueError(
            f"`{name}` takes 'auto', True, False or a "
            f"{_MONITORS[name].__name__}. Received: {name}={value!r}"
        )
    if name == "tensorboard" and value is True and directory is None:
        raise ValueError("tensorboard=True needs a `directory` to write logs in.")
    return value


def monitors(tensorboard, progress, directory):
    """The runner's `(GenerationTensorBoard or None, TqdmProgress or None)`."""
    made = []
    for value, make in (
        (tensorboard, lambda: GenerationTensorBoard(
            os.path.join(directory, "logs")
        )),
        (progress, TqdmProgress),
    ):
        if value == "auto":
            value = directory is not None
        made.append(make() if value is True else value or None)
    return tuple(made)


class ChainEvents:
    """Sends a chain's events to every callback that defines them.

    Args:
        callbacks: Callbacks; each gets the `GenerationCallback` events it
            has methods for (duck typing: any class may define them).
    """

    _EVENTS = ("on_chain_begin", "on_generation_begin", "on_generation_end",
               "on_evaluation", "on_chain_end")

    def __init__(self, callbacks):
        self.callbacks = [c for c in callbacks if c is not None]

    def __getattr__(self, event):
        if event not in self._EVENTS:
            raise AttributeError(event)

        def send(*args):
            for callback in self.callbacks:
                method = getattr(callback, event, None)
                if callable(method):
                    method(*args)

        return send
