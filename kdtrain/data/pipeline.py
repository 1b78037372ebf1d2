"""The pipeline builder: raw batches to preprocessed `tf.data` splits."""

import keras
import numpy as np
import tensorflow as tf

from kdtrain.data.info import DatasetInfo
from kdtrain.data.info import LoadedData
from kdtrain.data.splits import plan_splits
from kdtrain.data.splits import split_counts
from kdtrain.data.splits import unknown_counts


class _Preprocess:
    """Batch-level cast, rescale, augmentation and normalization."""

    def __init__(self, value_max, scaling, augment):
        self.value_max = float(value_max)
        self.scaling = scaling
        self.augment = augment
        self.normalizer = None

    def scale(self, x):
        x = tf.cast(x, tf.float32)
        if self.scaling != "none":
            x = x / self.value_max
        return x

    def __call__(self, x, y, training):
        x = self.scale(x)
        if training and self.augment is not None:
            if isinstance(self.augment, keras.Layer):
                x = self.augment(x, training=True)
            else:
                x = self.augment(x)
        if self.normalizer is not None:
            x = self.normalizer(x)
        return x, y

    def adapt(self, raw_batches):
        """Adapts the normalizer on un-augmented training batches."""
        if self.scaling != "normalize":
            return None, None
        norm = keras.layers.Normalization(axis=-1)
        norm.adapt(raw_batches.map(lambda x, y: self.scale(x)))
        self.normalizer = norm
        mean = np.asarray(norm.mean).reshape(-1)
        std = np.sqrt(np.asarray(norm.variance).reshape(-1))
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _array_batches(x, y, batch_size, shuffle, seed):
    """Batches of raw `(x, y)` gathered from in-memory arrays."""
    x_t = tf.constant(x)
    y_t = tf.constant(y)
    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    return ds.map(
        lambda i: (tf.gather(x_t, i), tf.gather(y_t, i)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _finish(raw_batches, preprocess, training):
    ds = raw_batches.map(
        lambda x, y: preprocess(x, y, training),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def info(name, common, counts, **meta):
    """The `DatasetInfo` of `load()` and `describe()`."""
    return DatasetInfo(
        name=name,
        num_train=counts["train"],
        num_validation=counts["validation"],
        num_test=counts["test"],
        augmented=common.augment is not None,
        scaling=common.scaling,
        **meta,
    )


def assemble(name, common, raw, adapt_batches, *, value_max, counts, **meta):
    """Preprocesses raw splits into a `LoadedData`.

    Args:
        name: Dataset name.
        common: The `CommonOptions` options.
        raw: Dict `{split: dataset of raw (x, y) batches}`, the training
            one already shuffled as wanted.
        adapt_batches: Callable returning un-shuffled raw training
            batches; called only for `scaling="normalize"`.
        value_max: Largest raw pixel value (rescaled to 1).
        counts: Dict of the number of samples of each split.
        **meta: `input_shape`, `class_names`, `label_format` and
            `num_classes` for the `DatasetInfo`.
    """
    preprocess = _Preprocess(value_max, common.scaling, common.augment)
    mean = std = None
    if common.scaling == "normalize":
        mean, std = preprocess.adapt(adapt_batches())
    datasets = {
        split: _finish(ds, preprocess, training=split == "train")
        for split, ds in raw.items()
    }
    metadata = info(
        name,
        common,
        counts,
        normalization_mean=mean,
        normalization_std=std,
        **meta,
    )
    return LoadedData(
        train=datasets["train"],
        validation=datasets.get("validation"),
        test=datasets["test"],
        info=metadata,
    )


def _from_arrays(name, common, *, train, test, class_names, value_max):
    """Builds `LoadedData` from `(x, y)` numpy pairs (x: NHWC)."""
    sources = {"train": train, "test": test}
    plan = plan_splits(common, {k: len(x) for k, (x, _) in sources.items()})
    splits = {}
    for split, (source, idx) in plan.items():
        x, y = sources[source]
        if len(idx) != len(x):
            x, y = x[idx], y[idx]
        splits[split] = (x, np.asarray(y).reshape(-1).astype("int32"))
    raw = {
        split: _array_batches(
            x,
            y,
            common.batch_size,
            shuffle=common.shuffle and split == "train",
            seed=common.seed,
        )
        for split, (x, y) in splits.items()
    }

    def adapt_batches():
        x, y = splits["train"]
        return _array_batches(x, y, 256, shuffle=False, seed=None)

    return assemble(
        name,
        common,
        raw,
        adapt_batches,
        value_max=value_max,
        counts=split_counts(plan),
        num_classes=len(class_names),
        input_shape=tuple(int(d) for d in train[0].shape[1:]),
        class_names=tuple(class_names),
        label_format="sparse",
    )


def array_loader(name, arrays, value_max=255.0):
    """`load` of a dataset read into memory by `arrays(**options)`.

    `arrays` returns `((x_train, y_train), (x_test, y_test), class_names)`
    with NHWC uint8 images.
    """

    def load(common, **options):
        train, test, class_names = arrays(**options)
        return _from_arrays(
            name,
            common,
            train=train,
            test=test,
            class_names=class_names,
            value_max=value_max,
        )

    return load

def fixed_describe(name, input_shape, class_names):
    """`describe` of a dataset of fixed shape and classes (sparse labels).

    `class_names` is a tuple, or a function of the dataset options.
    """

    def describe(common, **options):
        names = class_names(**options) if callable(class_names) else class_names
        return info(
            name,
            common,
            unknown_counts(common),
            num_classes=len(names),
            input_shape=input_shape,
            class_names=tuple(names),
            label_format="sparse",
        )

    return describe
