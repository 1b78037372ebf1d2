"""One data split given to a chain: a dataset, a `PyDataset` or arrays."""

import keras
import numpy as np
import tensorflow as tf

from kdtrain import cache as cache_module


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


class DataSplit:
    """One split: a `tf.data.Dataset`, a `PyDataset`, or `(x, y)` arrays."""

    def __init__(self, data, batch_size, argument):
        self.argument = argument
        self.batch_size = batch_size
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

    def fit_arguments(self):
        """The `x`, `y`... arguments of `fit` or `evaluate`."""
        if self.kind != "arrays":
            return {"x": self.data}
        arguments = {"x": self.x, "y": self.y, "batch_size": self.batch_size}
        if self.sample_weight is not None:
            arguments["sample_weight"] = self.sample_weight
        return arguments

    def validation_argument(self):
        """The split as `fit`'s `validation_data`."""
        return self.data if self.kind != "arrays" else self.data

    def first_batch(self):
        """`(x, y)` of a few samples (y may be None)."""
        if self.kind == "arrays":
            x = keras.tree.map_structure(lambda a: a[:4], self.x)
            y = None if self.y is None else self.y[:4]
            return x, y
        if self.kind == "dataset":
            element = next(iter(self.data.take(1)))
        else:
            element = self.data[0]
        x, y, _ = keras.utils.unpack_x_y_sample_weight(element)
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
            return cache_module.is_randomized(self.data)
        return None

    def arrays(self):
        """`(x, y, sample_weight, batch_size)` of one pass, in a fixed order."""
        if self.kind == "arrays":
            return self.x, self.y, self.sample_weight, self.batch_size or 32
        return cache_module.materialize(self.data)

    def shuffled(self, fit_kwargs):
        """Whether training visits the samples in a new order every epoch."""
        if self.kind == "arrays":
            return bool(fit_kwargs.get("shuffle", True))
        return cache_module.is_shuffled(self.data)

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
