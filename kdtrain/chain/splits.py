"""One data split given to a chain: a dataset, a `PyDataset` or arrays."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from kdtrain import pipelines
from kdtrain import validation
from kdtrain.cache import sample_keys

# Batches of a tf.data split whose labels are checked before training.
_CHECKED_BATCHES = 4


def _is_array(value):
    return isinstance(value, (np.ndarray, tf.Tensor)) or (
        hasattr(value, "shape") and hasattr(value, "dtype")
        and not isinstance(value, (tf.data.Dataset, keras.utils.PyDataset))
    )


def _is_array_structure(value):
    if isinstance(value, dict):
        return bool(value) and all(_is_array(v) for v in value.values())
    return _is_array(value)


def _shapes(structure):
    return keras.tree.map_structure(
        lambda a: [None if d is None else int(d) for d in a.shape], structure
    )


def check_label_values(y, classes, label_format, where):
    """Raises `ValueError` for labels that no output unit can match.

    Args:
        y: An array of labels.
        classes: Units of the models' output.
        label_format: `"sparse"`, `"binary"` or `"categorical"`.
        where: How the message names the labels, e.g. "`train_data`".
    """
    y = np.asarray(y)
    if label_format == "categorical" or y.size == 0:
        return
    values = y.reshape(-1)
    if label_format == "binary":
        bad = (values < 0) | (values > 1)
        expected = "in [0, 1] for a single output unit"
    else:
        bad = (values < 0) | (values >= classes) | (values != np.floor(values))
        expected = f"integer classes in [0, {classes})"
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"{where} has labels outside what the models can predict: "
            f"{values[first].item()!r} at sample {first} (labels must be "
            f"{expected}; "
            f"the models have {classes} output unit(s))."
        )


@dataclasses.dataclass(frozen=True)
class TrainingArrays:
    """A training split as arrays, in an order no pipeline state can change.

    Attributes:
        x, y, sample_weight: The samples (y and sample_weight may be None).
        batch_size: The split's batch size.
        keys: `kdtrain.cache.sample_keys` of the samples, row by row.
    """

    x: object
    y: object
    sample_weight: object
    batch_size: int
    keys: np.ndarray

    @property
    def num_samples(self):
        return len(self.keys)


class DataSplit:
    """One split: a `tf.data.Dataset`, a `PyDataset`, or `(x, y)` arrays.

    Args:
        data: The split as the user gave it.
        batch_size: The batch size of array data.
        argument: How messages name it (`"train_data"`...).

    Raises:
        TypeError: Data of another kind.
        ValueError: A bad batch size, or empty or unequal arrays.
    """

    def __init__(self, data, batch_size, argument):
        self.argument = argument
        self.batch_size = validation.integer("batch_size", batch_size, 1,
                                             allow_none=True)
        self.x = self.y = self.sample_weight = None
        if isinstance(data, tf.data.Dataset):
            self.kind = "dataset"
            self.data = data
            spec = data.element_spec
            self.has_labels = isinstance(spec, tuple) and len(spec) >= 2
        elif isinstance(data, keras.utils.PyDataset):
            self.kind = "pydataset"
            self.data = data
            first = data[0]
            self.has_labels = (
                isinstance(first, tuple) and len(first) >= 2
                and first[1] is not None
            )
        elif isinstance(data, (tuple, list)) and 1 <= len(data) <= 3 and (
            _is_array_structure(data[0])
        ):
            self.kind = "arrays"
            self.data = tuple(data)
            self.x = data[0]
            self.y = data[1] if len(data) > 1 else None
            self.sample_weight = data[2] if len(data) > 2 else None
            self.has_labels = self.y is not None
        elif _is_array_structure(data):
            self.kind = "arrays"
            self.data = (data,)
            self.x = data
            self.has_labels = False
        else:
            raise TypeError(
                f"`{argument}` must be a tf.data.Dataset, a "
                "keras.utils.PyDataset, or an (x, y) tuple of arrays. "
                "(A Python generator is consumed by one pass, and every "
                f"generation needs its own.) Received: {argument}={data!r}"
            )
        if self.kind == "arrays":
            self._check_arrays()

    def _check_arrays(self):
        counts = {
            len(leaf) for part in (self.x, self.y, self.sample_weight)
            if part is not None for leaf in keras.tree.flatten(part)
        }
        if counts == {0}:
            raise ValueError(f"`{self.argument}` is empty: it has 0 samples.")
        if len(counts) > 1:
            raise ValueError(
                f"The arrays of `{self.argument}` have different numbers of "
                f"samples: {sorted(counts)}."
            )

    def check_labels(self, classes, label_format):
        """Checks the labels (all of an array, a dataset's first batches)."""
        if not self.has_labels:
            return
        if self.kind == "arrays":
            check_label_values(self.y, classes, label_format,
                               f"`{self.argument}`")
            return
        for index, element in enumerate(self._batches(_CHECKED_BATCHES)):
            _, y, _ = keras.utils.unpack_x_y_sample_weight(element)
            check_label_values(
                keras.ops.convert_to_numpy(y), classes, label_format,
                f"Batch {index} of `{self.argument}`",
            )

    def _batches(self, count):
        if self.kind == "dataset":
            return list(self.data.take(count))
        return [self.data[i] for i in range(min(count, len(self.data)))]

    def input_batches(self):
        """The split's inputs, batch by batch, in one pass."""
        if self.kind == "arrays":
            yield from pipelines.array_batches(self.x, self.batch_size or 32)
            return
        elements = self.data if self.kind == "dataset" else (
            self.data[i] for i in range(len(self.data))
        )
        for element in elements:
            yield keras.utils.unpack_x_y_sample_weight(element)[0]

    def fit_arguments(self):
        """The `x`, `y`... arguments of `fit` or `evaluate`."""
        if self.kind != "arrays":
            return {"x": self.data}
        arguments = {"x": self.x, "y": self.y, "batch_size": self.batch_size}
        if self.sample_weight is not None:
            arguments["sample_weight"] = self.sample_weight
        return arguments

    def first_batch(self):
        """`(x, y)` of a few samples (y may be None)."""
        if self.kind == "arrays":
            x = keras.tree.map_structure(lambda a: a[:4], self.x)
            y = None if self.y is None else self.y[:4]
            return x, y
        element = self._batches(1)
        if not element:
            raise ValueError(f"`{self.argument}` is empty: it has no batches.")
        x, y, _ = keras.utils.unpack_x_y_sample_weight(element[0])
        return x, y

    def augmented(self):
        """Whether the samples may change from epoch to epoch (None: unknown).

        Arrays never change (Keras does not augment them); a
        `tf.data.Dataset` is augmented when its graph holds a random-number
        op (`kdtrain.cache.is_randomized`); a `PyDataset` cannot be seen.
        """
        if self.kind == "arrays":
            return False
        if self.kind == "dataset":
            return pipelines.is_randomized(self.data)
        return None

    def training_arrays(self, canonical=False):
        """The split as `TrainingArrays`, the same in every process.

        Arrays, and a dataset that does not shuffle, keep their order. A
        shuffling dataset (or any dataset, with `canonical`) is read once
        and its samples are sorted by key, so the order never depends on
        the state of the pipeline (its shuffling differs in a resumed
        process).
        """
        if self.kind == "arrays":
            x, y, weight = self.x, self.y, self.sample_weight
            batch_size = self.batch_size or 32
            keys = sample_keys(x, y, weight)
        else:
            x, y, weight, batch_size = pipelines.materialize(self.data)
            keys = sample_keys(x, y, weight)
        if self.kind == "dataset" and (
            canonical or pipelines.is_shuffled(self.data)
        ):
            order = np.argsort(keys, kind="stable")
            x, y, weight = [
                None if part is None else keras.tree.map_structure(
                    lambda a: np.asarray(a)[order], part
                )
                for part in (x, y, weight)
            ]
            keys = keys[order]
        return TrainingArrays(x, y, weight, batch_size, keys)

    def shuffled(self, fit_kwargs):
        """Whether training visits the samples in a new order every epoch."""
        if self.kind == "arrays":
            return bool(fit_kwargs.get("shuffle", True))
        return pipelines.is_shuffled(self.data)

    def describe(self):
        """What identifies the split in a configuration (shapes, not data)."""
        if self.kind == "arrays":
            return {
                "kind": "arrays",
                "x": _shapes(self.x),
                "y": None if self.y is None else _shapes(self.y),
                "sample_weight": self.sample_weight is not None,
                "batch_size": self.batch_size,
            }
        if self.kind == "dataset":
            return {
                "kind": "tf.data.Dataset",
                "element_spec": repr(self.data.element_spec),
                "cardinality": int(self.data.cardinality()),
            }
        x, y = self.first_batch()
        return {
            "kind": type(self.data).__name__,
            "batches": self.data.num_batches,
            "x": _shapes(x),
            "y": None if y is None else _shapes(y),
        }
