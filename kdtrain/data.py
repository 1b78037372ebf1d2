"""Datasets as batched, prefetched `tf.data` pipelines with metadata.

`load(name, **options)` returns a `LoadedData` with `train`, `validation`
and `test` datasets of `(images, labels)` batches and a `DatasetInfo`;
`describe(name, **options)` returns that `DatasetInfo` (as far as it is
known) without reading any data, and validates the options the same way.

Labels are sparse `int32` class indices of shape `(batch,)` for
multi-class data (`info.label_format == "sparse"`) and `float32` 0/1 of
shape `(batch, 1)` for two-class image folders (`"binary"`, matching a
one-unit sigmoid/logit head and `keras.losses.BinaryCrossentropy`).
"""

import dataclasses
import gzip
import inspect
import math
import numbers
import os
import pathlib
import pickle
import zlib
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

DATASETS = ("cifar10", "cifar100", "digits", "fashion_mnist", "image_folder")
AUGMENT_PRESETS = ("cifar", "mnist", "skin_cancer")
SCALINGS = ("rescale", "normalize", "none")
LABEL_FORMATS = ("sparse", "binary")

# Folders searched for the Fashion-MNIST IDX files when `data_dir` is not
# given (Debian/Ubuntu package `dataset-fashion-mnist`). Overridable, e.g.
# by tests.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DIGITS_NUM_SAMPLES = 1797  # scikit-learn's load_digits()
DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Image folder options, as `keras.utils.image_dataset_from_directory`
# takes them (`COLOR_MODES`: channels of each mode).
COLOR_MODES = {"grayscale": 1, "rgb": 3, "rgba": 4}
INTERPOLATIONS = (
    "bilinear",
    "nearest",
    "bicubic",
    "area",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)

# Seed of the held-out test split made for datasets without one ("digits",
# a plain image folder) and of `test_size` subsets: it does not follow
# `seed`, so runs with different seeds are evaluated on the same images.
TEST_SPLIT_SEED = 0

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files cannot be found (nor downloaded)."""


class DataFormatError(ValueError):
    """Raised when a dataset file is corrupt, truncated or of a wrong kind."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset, from `load()` or `describe()`.

    Attributes:
        name: Dataset name passed to `load()`.
        num_classes: Number of classes (2 for binary data).
        input_shape: `(height, width, channels)` of one image.
        class_names: Tuple of class names, index = label.
        label_format: `"sparse"` (int32 class indices, shape `(batch,)`)
            or `"binary"` (float32 0/1, shape `(batch, 1)`).
        num_train: Number of training samples; `None` when unknown
            (only from `describe()`, which reads no data).
        num_validation: Number of validation samples (0 if none);
            `None` when unknown (only from `describe()`).
        num_test: Number of test samples; `None` when unknown (only
            from `describe()`).
        augmented: Whether the training pipeline applies random
            augmentation (then each epoch sees different images).
        scaling: `"rescale"`, `"normalize"` or `"none"`.
        normalization_mean: Per-channel mean of the rescaled training
            images when `scaling="normalize"`, else `None` (always
            `None` from `describe()`).
        normalization_std: Matching per-channel standard deviation.
    """

    name: str
    num_classes: int
    input_shape: tuple
    class_names: tuple
    label_format: str
    num_train: Optional[int]
    num_validation: Optional[int]
    num_test: Optional[int]
    augmented: bool
    scaling: str = "rescale"
    normalization_mean: Optional[tuple] = None
    normalization_std: Optional[tuple] = None

    @property
    def output_units(self):
        """Units a classifier head needs: 1 for binary data, else classes."""
        return 1 if self.label_format == "binary" else self.num_classes


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedData:
    """The splits of a dataset and its metadata, as returned by `load()`.

    Attributes:
        train: Batched, prefetched `tf.data.Dataset` of `(x, y)`;
            shuffled each epoch when `shuffle=True` and augmented when
            `augment` is set.
        validation: Same for the validation split, or `None` when
            `validation_split=0` and the dataset has no own validation
            split. Never augmented nor shuffled.
        test: Same for the test split. Never augmented nor shuffled.
        info: A `DatasetInfo`.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo


def available():
    """Lists the dataset names accepted by `load()`.

    Returns:
        A list of strings.

    Example:

    >>> "fashion_mnist" in available()
    True
    """
    return list(DATASETS)


def augmentation(preset, *, seed=None):
    """Returns the augmentation layers of a named preset.

    The presets reproduce the seed report's `ImageDataGenerator` settings
    with Keras preprocessing layers (`fill_mode="nearest"` as there):

    - `"cifar"`: rotation 20 degrees, width/height shift 0.2, horizontal
      flip.
    - `"skin_cancer"`: rotation 10 degrees, zoom 0.1, shift 0.2.
    - `"mnist"`: mild; rotation 10 degrees, shift 0.1, no flip, filled
      with zeros (the black background).

    Args:
        preset: One of `"cifar"`, `"mnist"`, `"skin_cancer"`.
        seed: Optional int seed of the random layers.

    Returns:
        A `keras.Sequential` of random image preprocessing layers.

    Example:

    >>> layers = augmentation("cifar", seed=0)
    >>> [type(layer).__name__ for layer in layers.layers]
    ['RandomRotation', 'RandomTranslation', 'RandomFlip']
    """
    L = keras.layers
    if preset == "cifar":
        layers = [
            L.RandomRotation(20 / 360, fill_mode="nearest", seed=seed),
            L.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed),
            L.RandomFlip("horizontal", seed=seed),
        ]
    elif preset == "skin_cancer":
        layers = [
            L.RandomRotation(10 / 360, fill_mode="nearest", seed=seed),
            L.RandomZoom(0.1, 0.1, fill_mode="nearest", seed=seed),
            L.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed),
        ]
    elif preset == "mnist":
        layers = [
            L.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
            L.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
        ]
    else:
        raise ValueError(
            f"Unknown augmentation preset {preset!r}. Valid presets: "
            f"{', '.join(AUGMENT_PRESETS)}, or pass a list of Keras "
            "preprocessing layers or a keras.Sequential."
        )
    return keras.Sequential(layers, name=f"augment_{preset}")


def load(name, **options):
    """Loads a dataset as `tf.data` pipelines.

    Datasets: `"digits"` (scikit-learn, 8x8x1), `"fashion_mnist"`
    (28x28x1), `"cifar10"` / `"cifar100"` (32x32x3), `"image_folder"`
    (a folder of class sub-folders, see below).

    Common options:
        batch_size: Int, defaults to 32.
        validation_split: Float in `[0, 1)`, fraction of the training data
            held out for validation (chosen with `seed`) when the dataset
            has no validation split of its own. Defaults to `0.1`; `0`
            gives `validation=None`.
        seed: Int seed of the validation split, the training subset, the
            shuffling and the augmentation. Defaults to `0`. Test splits
            and test subsets always use `TEST_SPLIT_SEED`.
        shuffle: Bool, reshuffle the training split each epoch (default
            `True`). Validation and test are never shuffled.
        augment: `None` (default), a preset name (`"cifar"`, `"mnist"`,
            `"skin_cancer"`, see `augmentation()`), a list of Keras
            preprocessing layers, a `keras.Sequential` or any callable on
            image batches. Applied to training batches only, after
            rescaling and before normalization.
        scaling: `"rescale"` (default: pixel values to `[0, 1]`),
            `"normalize"` (rescale, then per-channel standardization
            with mean/std of the training split through
            `keras.layers.Normalization.adapt`) or `"none"` (raw values
            as float32).
        train_size, validation_size, test_size: Optional ints capping
            each split to a deterministic random subset (for quick runs
            on small machines). The validation split is carved out of the
            full training data first, so it does not depend on
            `train_size`.

    Dataset options:
        digits: `test_split=0.2` (stratified, `TEST_SPLIT_SEED`).
        fashion_mnist: `data_dir` - folder with the four IDX files
            (`train-images-idx3-ubyte[.gz]`, ...). Without it, the
            folders in `FASHION_MNIST_DIRS` (Debian's
            `dataset-fashion-mnist`), then
            `keras.datasets.fashion_mnist.load_data()` (keras cache, then
            download) are tried.
        cifar10, cifar100: `data_dir` - the extracted python version
            (`cifar-10-batches-py` / `cifar-100-python`, or their parent);
            without it `keras.datasets` (cache, then download).
            cifar100 also takes `label_mode="fine"` or `"coarse"`.
        image_folder: `directory` (required), `image_size=(256, 256)`,
            `color_mode="rgb"`, `label_mode=None` (auto: `"binary"` for
            2 classes, else `"int"`), `class_names`, `interpolation`,
            `crop_to_aspect_ratio`, `pad_to_aspect_ratio`, `follow_links`
            (passed to `keras.utils.image_dataset_from_directory`, which
            lists, decodes and resizes the images), plus
            `num_classes` (optional; an error if the folder has another
            number of classes), `test_split=0.2`, `cache=True` (decoded
            images in memory, as uint8; a path caches to that file plus
            `.train` / `.validation` / `.test`; `False` disables; files
            are read in class order, and without an in-memory cache the
            training shuffle buffer holds at most 8192 images) and
            `validate_images=True` (check each file with PIL up front).
            Layouts: `root/train/` + `root/test/` (validation carved from
            train), `root/train/` + `root/valid/` (or `validation/`) +
            `root/test/`, `root/train/` + `root/valid/` (test carved from
            train), or a plain folder of class folders (test and
            validation carved out). Class indices follow the sorted class
            folders of the training folder (or `class_names`) in every
            split.

    Args:
        name: Dataset name, see `available()`.
        **options: See above.

    Returns:
        A `LoadedData` with `train`, `validation` (or `None`) and `test`
        datasets of `(images, labels)` batches (images float32
        `(batch, height, width, channels)`) and `info`, a `DatasetInfo`.

    Raises:
        ValueError: Unknown dataset, bad option value, or data unfit for
            classification (a single class, no images, ...).
        TypeError: An option name the dataset does not take.
        DatasetNotFoundError: The dataset's files are missing.
        DataFormatError: A file is corrupt.

    Example:

    ```python
    data = load("fashion_mnist", batch_size=64, augment="mnist")
    data.info.input_shape, data.info.num_classes  # ((28, 28, 1), 10)
    model = kdtrain.models.build(
        "wrn-16-1", num_classes=data.info.output_units,
        input_shape=data.info.input_shape,
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(data.train, validation_data=data.validation, epochs=10)
    ```
    """
    spec, common, dataset_options = _parse_options(name, options)
    return spec.load(common, **dataset_options)


def describe(name, **options):
    """What `load(name, **options)` would return, without reading data.

    Validates the options exactly as `load()` does (same errors) and
    returns the `DatasetInfo` that `load()` would, as far as it is known
    without the data files - for checking a configuration on a machine
    that lacks the dataset. No image or data file is opened; for
    `"image_folder"` the class folders are listed when `directory`
    exists.

    - Sample counts (`num_train`, `num_validation`, `num_test`) are
      `None` when unknown: they are exact for `"digits"` (bundled with
      scikit-learn), `num_validation` is `0` where it is known that there
      will be no validation split, and everything else is `None`.
    - `normalization_mean` / `normalization_std` are always `None` (they
      are computed from the training images).
    - `class_names` are the known names, generated ones (`"0"`, `"1"`, ...)
      where `load()` would generate them too (`"digits"`, `"cifar100"`
      read through `keras.datasets`), or `()` for an image folder that is
      not there. An image folder that is not there needs `num_classes=`
      (or `class_names=`).

    Args:
        name: Dataset name, see `available()`.
        **options: As for `load()`.

    Returns:
        A `DatasetInfo`.

    Raises:
        ValueError, TypeError: As `load()` for the same options.

    Example:

    >>> info = describe("image_folder", directory="/data/skin_cancer",
    ...                 image_size=(96, 96), num_classes=2)
    >>> info.input_shape, info.label_format, info.num_train
    ((96, 96, 3), 'binary', None)
    """
    spec, common, dataset_options = _parse_options(name, options)
    return spec.describe(common, **dataset_options)


# ---------------------------------------------------------------------------
# Option handling


@dataclasses.dataclass(frozen=True)
class _Common:
    batch_size: int
    validation_split: float
    seed: int
    shuffle: bool
    augment: object
    scaling: str
    train_size: int
    validation_size: int
    test_size: int


def _common(
    batch_size=32,
    validation_split=0.1,
    seed=0,
    shuffle=True,
    augment=None,
    scaling="rescale",
    train_size=None,
    validation_size=None,
    test_size=None,
):
    batch_size = _positive_int("batch_size", batch_size)
    if (
        not isinstance(validation_split, numbers.Real)
        or not 0 <= validation_split < 1
    ):
        raise ValueError(
            "`validation_split` must be a float in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    if scaling not in SCALINGS:
        raise ValueError(
            f"`scaling` must be one of {SCALINGS}. Received: scaling={scaling!r}"
        )
    augment = _resolve_augment(augment, int(seed))
    return _Common(
        batch_size=batch_size,
        validation_split=float(validation_split),
        seed=int(seed),
        shuffle=bool(shuffle),
        augment=augment,
        scaling=scaling,
        train_size=_positive_int("train_size", train_size, True),
        validation_size=_positive_int("validation_size", validation_size, True),
        test_size=_positive_int("test_size", test_size, True),
    )


_COMMON_OPTIONS = tuple(inspect.signature(_common).parameters)


def _parse_options(name, options):
    """Validates `load()` / `describe()` options, reading no files.

    Returns:
        `(spec, common, dataset_options)`: the dataset's `_Spec`, the
        common options as a `_Common` and the validated dataset options
        (keyword arguments of `spec.load` and `spec.describe`).
    """
    if name not in _SPECS:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}."
        )
    spec = _SPECS[name]
    own = tuple(inspect.signature(spec.options).parameters)
    unknown = sorted(set(options) - set(own) - set(_COMMON_OPTIONS))
    if unknown:
        raise TypeError(
            f"Dataset {name!r} got unknown option(s): {', '.join(unknown)}. "
            f"Valid options: {', '.join(own + _COMMON_OPTIONS)}."
        )
    common = _common(
        **{k: v for k, v in options.items() if k in _COMMON_OPTIONS}
    )
    dataset_options = spec.options(
        **{k: v for k, v in options.items() if k in own}
    )
    return spec, common, dataset_options


def _positive_int(arg, value, allow_none=False, minimum=1):
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(
            f"`{arg}` must be {kind}{' or None' if allow_none else ''}. "
            f"Received: {arg}={value!r}"
        )
    return int(value)


def _resolve_augment(augment, seed):
    if augment is None or augment is False:
        return None
    if isinstance(augment, str):
        return augmentation(augment, seed=seed)
    if isinstance(augment, (list, tuple)):
        if not augment:
            return None
        for layer in augment:
            if not callable(layer):
                raise ValueError(
                    "`augment` list items must be Keras layers. "
                    f"Received: {layer!r}"
                )
        return keras.Sequential(list(augment), name="augment")
    if callable(augment):
        return augment
    raise ValueError(
        "`augment` must be None, a preset name "
        f"({', '.join(AUGMENT_PRESETS)}), a list of Keras layers or a "
        f"keras.Sequential. Received: augment={augment!r}"
    )


def _check_fraction(arg, value):
    if not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(
            f"`{arg}` must be a float in (0, 1). Received: {arg}={value!r}"
        )
    return float(value)


def _check_path(arg, value):
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"`{arg}` must be a path (str or os.PathLike) or None. "
            f"Received: {arg}={value!r}"
        )
    return value


# ---------------------------------------------------------------------------
# Splits


def _subset_indices(n, size, seed):
    """Sorted indices of a deterministic random subset of `size` of `n`."""
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[:size])


def _split_indices(n, fraction, seed):
    """Splits `range(n)` into (kept, held_out) sorted index arrays."""
    n_out = int(round(n * fraction))
    if fraction > 0 and n_out == 0 and n > 1:
        n_out = 1
    if n_out >= n:
        raise ValueError(
            f"Cannot hold out {fraction:.0%} of only {n} samples and keep "
            "any for training."
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def _plan_splits(common, sizes, test_split=None):
    """Which samples of which source each split takes.

    Args:
        common: The `_Common` options (validation split, seeds, caps).
        sizes: Number of samples of each source: `"train"`, and
            `"validation"` / `"test"` where the dataset has them. A
            missing test source is carved out of train (`test_split`,
            `TEST_SPLIT_SEED`), then a missing validation source
            (`common.validation_split`, `common.seed`).
        test_split: Fraction for a missing test source.

    Returns:
        A dict `{split: (source, indices)}` with sorted index arrays,
        capped by `train_size` / `validation_size` / `test_size`.
    """
    pool = np.arange(sizes["train"])
    plan = {}
    if "test" in sizes:
        plan["test"] = ("test", np.arange(sizes["test"]))
    else:
        keep, held = _split_indices(len(pool), test_split, TEST_SPLIT_SEED)
        plan["test"] = ("train", pool[held])
        pool = pool[keep]
    if "validation" in sizes:
        plan["validation"] = ("validation", np.arange(sizes["validation"]))
    elif common.validation_split > 0:
        keep, held = _split_indices(
            len(pool), common.validation_split, common.seed
        )
        plan["validation"] = ("train", pool[held])
        pool = pool[keep]
    plan["train"] = ("train", pool)
    caps = {
        "train": (common.train_size, common.seed),
        "validation": (common.validation_size, common.seed + 1),
        "test": (common.test_size, TEST_SPLIT_SEED),
    }
    ordered = {}
    for split in ("train", "validation", "test"):
        if split in plan:
            source, idx = plan[split]
            size, seed = caps[split]
            ordered[split] = (source, idx[_subset_indices(len(idx), size, seed)])
    return ordered


def _split_counts(plan):
    counts = {split: len(idx) for split, (_, idx) in plan.items()}
    counts.setdefault("validation", 0)
    return counts


def _unknown_counts(common, has_validation_source=False):
    """Counts for `describe()` when the number of samples is unknown."""
    no_validation = common.validation_split == 0 and not has_validation_source
    return {
        "train": None,
        "validation": 0 if no_validation else None,
        "test": None,
    }


# ---------------------------------------------------------------------------
# Pipelines


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


def _info(name, common, counts, **meta):
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


def _assemble(name, common, raw, adapt_batches, *, value_max, counts, **meta):
    """Preprocesses raw splits into a `LoadedData`.

    Args:
        name: Dataset name.
        common: The `_Common` options.
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
    info = _info(
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
        info=info,
    )


def _from_arrays(name, common, *, train, test, class_names, value_max):
    """Builds `LoadedData` from `(x, y)` numpy pairs (x: NHWC)."""
    sources = {"train": train, "test": test}
    plan = _plan_splits(common, {k: len(x) for k, (x, _) in sources.items()})
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

    return _assemble(
        name,
        common,
        raw,
        adapt_batches,
        value_max=value_max,
        counts=_split_counts(plan),
        num_classes=len(class_names),
        input_shape=tuple(int(d) for d in train[0].shape[1:]),
        class_names=tuple(class_names),
        label_format="sparse",
    )


def _array_loader(name, arrays, value_max=255.0):
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


# ---------------------------------------------------------------------------
# digits


def _digits_options(test_split=0.2):
    return {"test_split": _check_fraction("test_split", test_split)}


def _digits_arrays(*, test_split):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype("uint8")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        digits.target,
        test_size=test_split,
        stratify=digits.target,
        random_state=TEST_SPLIT_SEED,
    )
    return (x_train, y_train), (x_test, y_test), DIGITS_CLASS_NAMES


def _describe_digits(common, *, test_split):
    # train_test_split's rounding of a float test_size.
    num_test = math.ceil(test_split * DIGITS_NUM_SAMPLES)
    sizes = {"train": DIGITS_NUM_SAMPLES - num_test, "test": num_test}
    return _info(
        "digits",
        common,
        _split_counts(_plan_splits(common, sizes)),
        num_classes=len(DIGITS_CLASS_NAMES),
        input_shape=(8, 8, 1),
        class_names=DIGITS_CLASS_NAMES,
        label_format="sparse",
    )


# ---------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def read_idx(path):
    """Reads an IDX file (as used by MNIST), gzip-compressed or not.

    Args:
        path: Path of the file.

    Returns:
        A numpy array with the file's dtype and shape.

    Raises:
        DataFormatError: The file is not valid IDX, or truncated.

    Example:

    >>> images = read_idx("train-images-idx3-ubyte.gz")  # (60000, 28, 28)
    """
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if compressed else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataFormatError(
            f"Cannot read IDX file {path}: corrupt or truncated ({e})."
        ) from e
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise DataFormatError(
            f"{path} is not an IDX file (bad magic number "
            f"{data[:4].hex() or 'missing'})."
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"IDX file {path} is truncated (header).")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"IDX file {path} is truncated or corrupt: dimensions {dims} "
            f"need {expected} data bytes, found {len(data) - header}."
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _find_idx_files(directory):
    """Paths of the four Fashion-MNIST files in `directory`, or None."""
    directory = pathlib.Path(directory)
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _read_fashion_mnist(files):
    arrays = {key: read_idx(path) for key, path in files.items()}
    for key, expected_ndim in (
        ("x_train", 3),
        ("y_train", 1),
        ("x_test", 3),
        ("y_test", 1),
    ):
        magic = 0x800 + expected_ndim
        if arrays[key].ndim != expected_ndim or arrays[key].dtype != np.uint8:
            raise DataFormatError(
                f"{files[key]} is not an unsigned-byte IDX file with "
                f"{expected_ndim} dimension(s) (expected magic number "
                f"{magic:#010x})."
            )
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataFormatError(
                f"{files['x_' + split]} holds {len(x)} images but "
                f"{files['y_' + split]} holds {len(y)} labels."
            )
        if len(y) and y.max() >= 10:
            raise DataFormatError(
                f"{files['y_' + split]} has label {int(y.max())}; "
                "Fashion-MNIST labels are 0-9."
            )
    return (
        (arrays["x_train"], arrays["y_train"]),
        (arrays["x_test"], arrays["y_test"]),
    )


def _fashion_mnist_not_found(detail):
    names = ", ".join(f"{stem}.gz" for stem in FASHION_MNIST_FILES.values())
    return DatasetNotFoundError(
        f"Fashion-MNIST files not found ({detail}). Provide them in one of "
        f"three ways: (1) pass data_dir= a folder holding {names} "
        "(gzip-compressed or not); (2) on Debian/Ubuntu run "
        "`apt-get install dataset-fashion-mnist` (installs them in "
        f"{', '.join(map(str, FASHION_MNIST_DIRS)) or 'its folder'}); "
        "(3) let keras.datasets.fashion_mnist.load_data() find them in the "
        "keras cache (~/.keras/datasets/fashion-mnist) or download them "
        "(needs internet)."
    )


def _data_dir_options(data_dir=None):
    return {"data_dir": _check_path("data_dir", data_dir)}


def _fashion_mnist_arrays(*, data_dir):
    if data_dir is not None:
        files = _find_idx_files(data_dir)
        if files is None:
            raise _fashion_mnist_not_found(
                f"data_dir={str(data_dir)!r} lacks some of the four files"
            )
        train, test = _read_fashion_mnist(files)
    else:
        train = test = None
        for directory in FASHION_MNIST_DIRS:
            files = _find_idx_files(directory)
            if files is not None:
                train, test = _read_fashion_mnist(files)
                break
        if train is None:
            try:
                train, test = keras.datasets.fashion_mnist.load_data()
            except Exception as e:
                raise _fashion_mnist_not_found(
                    "searched " + ", ".join(map(str, FASHION_MNIST_DIRS))
                    + f"; keras.datasets failed with {type(e).__name__}: {e}"
                ) from e
    (x_train, y_train), (x_test, y_test) = train, test
    return (
        (x_train[..., None], y_train),
        (x_test[..., None], y_test),
        FASHION_MNIST_CLASS_NAMES,
    )


# ---------------------------------------------------------------------------
# CIFAR (python pickles)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds.

    A CIFAR python batch is a dict of bytes keys to lists, bytes, numbers
    and NumPy arrays. Rebuilding those needs three globals (NumPy's array
    reconstruction, `ndarray`, `dtype`; `_codecs.encode` for files written
    by Python 3) and nothing else; any other global (`os.system`,
    `builtins.eval`...) is refused, so a crafted file cannot run code.
    """

    _ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
    })

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it asks for {module}.{name}, which a CIFAR batch never holds "
            "(refused: unpickling it could run code)"
        )


def _read_cifar_pickle(path):
    try:
        with open(path, "rb") as f:
            content = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DataFormatError(
            f"Cannot read CIFAR batch {path}: corrupt or not a CIFAR "
            f"python pickle ({type(e).__name__}: {e})."
        ) from e
    if not isinstance(content, dict):
        raise DataFormatError(f"{path} does not hold a CIFAR batch dict.")
    return {
        k.decode("utf8") if isinstance(k, bytes) else k: v
        for k, v in content.items()
    }


def _cifar_images(batch, path):
    try:
        data = np.asarray(batch["data"], dtype="uint8")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as e:
        raise DataFormatError(
            f"{path} has no valid 'data' entry of N x 3072 bytes ({e})."
        ) from e


def _cifar_labels(batch, key, path, count):
    if key not in batch:
        raise DataFormatError(f"{path} has no {key!r} entry.")
    labels = np.asarray(batch[key]).reshape(-1).astype("int64")
    if len(labels) != count:
        raise DataFormatError(
            f"{path} holds {count} images but {len(labels)} labels."
        )
    return labels


def _decode_names(names):
    return tuple(n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names)


def _find_cifar_dir(data_dir, folder, marker):
    data_dir = pathlib.Path(data_dir)
    for candidate in (data_dir, data_dir / folder):
        if (candidate / marker).is_file():
            return candidate
    raise DatasetNotFoundError(
        f"No CIFAR python batches in data_dir={str(data_dir)!r}: expected "
        f"{marker!r} there or in {folder}/ (the extracted python version of "
        "the dataset). Omit data_dir to use keras.datasets (keras cache, "
        "then download)."
    )


def _keras_dataset(loader, name, **kwargs):
    try:
        return loader(**kwargs)
    except Exception as e:
        raise DatasetNotFoundError(
            f"{name} is not available: keras.datasets failed with "
            f"{type(e).__name__}: {e}. Pass data_dir= the extracted python "
            "pickle folder, or place the archive in the keras cache "
            "(~/.keras/datasets)."
        ) from e


def _read_cifar_batch(path, labels_key):
    batch = _read_cifar_pickle(path)
    x = _cifar_images(batch, path)
    return x, _cifar_labels(batch, labels_key, path, len(x))


def _cifar10_arrays(*, data_dir):
    if data_dir is None:
        train, test = _keras_dataset(keras.datasets.cifar10.load_data, "cifar10")
        return train, test, CIFAR10_CLASS_NAMES
    root = _find_cifar_dir(data_dir, "cifar-10-batches-py", "data_batch_1")
    batches = [
        _read_cifar_batch(root / f"data_batch_{i}", "labels") for i in range(1, 6)
    ]
    train = tuple(np.concatenate(parts) for parts in zip(*batches))
    test = _read_cifar_batch(root / "test_batch", "labels")
    class_names = CIFAR10_CLASS_NAMES
    if (root / "batches.meta").is_file():
        meta = _read_cifar_pickle(root / "batches.meta")
        class_names = _decode_names(meta.get("label_names", class_names))
    return train, test, class_names


def _cifar100_options(data_dir=None, label_mode="fine"):
    if label_mode not in ("fine", "coarse"):
        raise ValueError(
            '`label_mode` must be "fine" or "coarse". '
            f"Received: label_mode={label_mode!r}"
        )
    return {"data_dir": _check_path("data_dir", data_dir), "label_mode": label_mode}


def _cifar100_class_names(label_mode):
    """Names used when the data carry none (keras.datasets)."""
    return tuple(str(i) for i in range(100 if label_mode == "fine" else 20))


def _cifar100_arrays(*, data_dir, label_mode):
    class_names = _cifar100_class_names(label_mode)
    if data_dir is None:
        train, test = _keras_dataset(
            keras.datasets.cifar100.load_data, "cifar100", label_mode=label_mode
        )
        return train, test, class_names
    root = _find_cifar_dir(data_dir, "cifar-100-python", "train")
    train = _read_cifar_batch(root / "train", f"{label_mode}_labels")
    test = _read_cifar_batch(root / "test", f"{label_mode}_labels")
    if (root / "meta").is_file():
        meta = _read_cifar_pickle(root / "meta")
        names = meta.get(f"{label_mode}_label_names")
        if names is not None and len(names) == len(class_names):
            class_names = _decode_names(names)
    return train, test, class_names


def _fixed_describe(name, input_shape, class_names):
    """`describe` of a dataset of fixed shape and classes (sparse labels).

    `class_names` is a tuple, or a function of the dataset options.
    """

    def describe(common, **options):
        names = class_names(**options) if callable(class_names) else class_names
        return _info(
            name,
            common,
            _unknown_counts(common),
            num_classes=len(names),
            input_shape=input_shape,
            class_names=tuple(names),
            label_format="sparse",
        )

    return describe


# ---------------------------------------------------------------------------
# Image folders


@dataclasses.dataclass(frozen=True)
class _FolderOptions:
    """Validated `"image_folder"` options."""

    directory: object
    image_size: tuple
    color_mode: str
    label_mode: object
    class_names: object
    num_classes: object
    interpolation: str
    crop_to_aspect_ratio: bool
    pad_to_aspect_ratio: bool
    follow_links: bool
    test_split: float
    cache: object  # True (memory), False or a file path (str)
    validate_images: bool

    @property
    def input_shape(self):
        return self.image_size + (COLOR_MODES[self.color_mode],)


def _image_folder_options(
    directory=None,
    image_size=(256, 256),
    color_mode="rgb",
    label_mode=None,
    class_names=None,
    num_classes=None,
    interpolation="bilinear",
    crop_to_aspect_ratio=False,
    pad_to_aspect_ratio=False,
    follow_links=False,
    test_split=0.2,
    cache=True,
    validate_images=True,
):
    if directory is None:
        raise ValueError('"image_folder" needs `directory=` (a folder path).')
    _check_path("directory", directory)
    if isinstance(image_size, numbers.Integral) and not isinstance(
        image_size, bool
    ):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (list, tuple))
        or len(image_size) != 2
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
            for s in image_size
        )
    ):
        raise ValueError(
            "`image_size` must be (height, width) of positive ints. "
            f"Received: image_size={image_size!r}"
        )
    if color_mode not in COLOR_MODES:
        raise ValueError(
            '`color_mode` must be one of "grayscale", "rgb", "rgba". '
            f"Received: color_mode={color_mode!r}"
        )
    if label_mode not in (None, "int", "binary"):
        raise ValueError(
            '`label_mode` must be None (auto), "int" or "binary" (kdtrain '
            "uses sparse integer labels; one-hot is not supported). "
            f"Received: label_mode={label_mode!r}"
        )
    if class_names is not None:
        if (
            not isinstance(class_names, (list, tuple))
            or not all(isinstance(c, str) for c in class_names)
            or len(set(class_names)) != len(class_names)
        ):
            raise ValueError(
                "`class_names` must be a list of distinct class folder "
                f"names. Received: class_names={class_names!r}"
            )
        class_names = tuple(class_names)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ValueError(
            "Only one of `crop_to_aspect_ratio` and `pad_to_aspect_ratio` "
            "can be True."
        )
    if cache is not None and not isinstance(cache, (bool, str, os.PathLike)):
        raise ValueError(
            "`cache` must be True (in memory), False or a file path. "
            f"Received: cache={cache!r}"
        )
    if not isinstance(cache, bool):  # None or a path ("" disables too)
        cache = os.fspath(cache) if cache is not None else ""
        cache = cache or False
    folder = _FolderOptions(
        directory=directory,
        image_size=tuple(int(s) for s in image_size),
        color_mode=color_mode,
        label_mode=label_mode,
        class_names=class_names,
        num_classes=_positive_int("num_classes", num_classes, True, minimum=2),
        interpolation=interpolation,
        crop_to_aspect_ratio=bool(crop_to_aspect_ratio),
        pad_to_aspect_ratio=bool(pad_to_aspect_ratio),
        follow_links=bool(follow_links),
        test_split=_check_fraction("test_split", test_split),
        cache=cache,
        validate_images=bool(validate_images),
    )
    _static_label_format(folder)  # checks the class options agree
    return {"folder": folder}


def _folder_label_format(folder, num_classes, where, names=None):
    """Checks a class count against the options; returns the label format."""
    listed = f": {list(names)}" if names else ""
    if num_classes == 0:
        raise ValueError(
            f"{where} has no class sub-folders; an image folder needs one "
            "sub-folder of images per class."
        )
    if num_classes == 1:
        raise ValueError(
            f"{where} has a single class{listed}; classification needs at "
            "least 2 class sub-folders."
        )
    if folder.num_classes is not None and num_classes != folder.num_classes:
        raise ValueError(
            f"`num_classes={folder.num_classes}` but {where} has "
            f"{num_classes} classes{listed}."
        )
    if folder.label_mode == "binary" and num_classes != 2:
        raise ValueError(
            f'`label_mode="binary"` needs exactly 2 classes; {where} has '
            f"{num_classes}{listed}."
        )
    if folder.label_mode == "binary" or (
        folder.label_mode is None and num_classes == 2
    ):
        return "binary"
    return "sparse"


def _static_label_format(folder):
    """Label format from `class_names` / `num_classes`; None if unknown."""
    if folder.class_names is not None:
        return _folder_label_format(
            folder, len(folder.class_names), "`class_names`", folder.class_names
        )
    if folder.num_classes is not None:
        return _folder_label_format(folder, folder.num_classes, "`num_classes`")
    return None


def _folder_layout(root):
    """The source folders of each split: `{"train": path, ...}`."""
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" in subdirs:
        sources = {
            "train": subdirs["train"],
            "validation": subdirs.get("valid", subdirs.get("validation")),
            "test": subdirs.get("test"),
        }
        if sources["validation"] is not None or sources["test"] is not None:
            return {k: v for k, v in sources.items() if v is not None}
    return {"train": root}


def _class_folders(directory, folder):
    """Class names of a folder of class folders, checked; and label format.

    Lists the sub-folders as `keras.utils.image_dataset_from_directory`
    does (sorted, hidden ones skipped), or takes `class_names`.
    """
    subdirs = sorted(
        p.name
        for p in pathlib.Path(directory).iterdir()
        if p.is_dir() and not p.name.startswith(".")
    )
    names = tuple(subdirs)
    if folder.class_names is not None:
        missing = [c for c in folder.class_names if c not in subdirs]
        if missing:
            raise ValueError(
                f"`class_names` {missing} are not sub-folders of {directory} "
                f"(found: {subdirs})."
            )
        names = folder.class_names
    where = f"Image folder {directory}"
    return names, _folder_label_format(folder, len(names), where, names)


def _validate_images(paths):
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:
            raise DataFormatError(
                f"Corrupt or unreadable image file {path}: "
                f"{type(e).__name__}: {e}"
            ) from e


def _image_stream(directory, names, label_format, folder):
    """Unbatched `(image, label)` of a class-folder tree, in sorted order.

    Images are listed, decoded and resized by
    `keras.utils.image_dataset_from_directory` (float32 in [0, 255]);
    `.file_paths` lists the files in the order of the elements.
    """
    return keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="binary" if label_format == "binary" else "int",
        class_names=list(names),
        color_mode=folder.color_mode,
        batch_size=None,
        image_size=folder.image_size,
        shuffle=False,  # a fixed order, to select the splits by index
        interpolation=folder.interpolation,
        follow_links=folder.follow_links,
        crop_to_aspect_ratio=folder.crop_to_aspect_ratio,
        pad_to_aspect_ratio=folder.pad_to_aspect_ratio,
        data_format="channels_last",
        verbose=False,
    )


def _to_uint8(x, y):
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y


def _select(stream, indices):
    """The elements of `stream` at the sorted `indices`, as uint8 images.

    Keras decodes each file of the folder before the filter drops it, so
    a split carved out of a folder costs one pass over the whole folder
    (once, when cached). Images are rounded to uint8 (as the files
    store them; only resizing's fractions are lost), a quarter of the
    cache size of Keras' float32.
    """
    count = len(stream.file_paths)
    ds = stream
    if len(indices) < count:
        mask = np.zeros(count, dtype=bool)
        mask[indices] = True
        keep = tf.constant(mask)
        ds = ds.enumerate().filter(lambda i, _: keep[i]).map(lambda _, e: e)
    return ds.map(_to_uint8, num_parallel_calls=tf.data.AUTOTUNE)


def _inspect_folder(folder):
    """Source folders, class names and label format of an image folder.

    Lists folders only; `None` if `folder.directory` does not exist.
    """
    root = pathlib.Path(folder.directory)
    if not root.is_dir():
        return None
    sources = _folder_layout(root)
    return (sources, *_class_folders(sources["train"], folder))


def _load_image_folder(common, *, folder):
    inspected = _inspect_folder(folder)
    if inspected is None:
        raise DatasetNotFoundError(f"Image folder not found: {folder.directory}")
    sources, names, label_format = inspected
    streams = {
        source: _image_stream(path, names, label_format, folder)
        for source, path in sources.items()
    }
    plan = _plan_splits(
        common,
        {source: len(ds.file_paths) for source, ds in streams.items()},
        folder.test_split,
    )
    if folder.validate_images:
        for source, idx in plan.values():
            _validate_images([streams[source].file_paths[i] for i in idx])

    unbatched, raw = {}, {}
    for split, (source, idx) in plan.items():
        ds = _select(streams[source], idx)
        if folder.cache is True:
            ds = ds.cache()
        elif folder.cache:
            ds = ds.cache(f"{folder.cache}.{split}")
        unbatched[split] = ds
        if split == "train" and common.shuffle:
            # The folder order is sorted by class: a buffer of the whole
            # split shuffles fully, at no memory cost when cached in
            # memory (it holds the cache's tensors).
            buffer = len(idx) if folder.cache is True else min(len(idx), 8192)
            ds = ds.shuffle(buffer, seed=common.seed, reshuffle_each_iteration=True)
        raw[split] = ds.batch(common.batch_size)

    return _assemble(
        "image_folder",
        common,
        raw,
        lambda: unbatched["train"].batch(256),
        value_max=255.0,
        counts=_split_counts(plan),
        num_classes=len(names),
        input_shape=folder.input_shape,
        class_names=tuple(names),
        label_format=label_format,
    )


def _describe_image_folder(common, *, folder):
    inspected = _inspect_folder(folder)
    if inspected is not None:
        sources, names, label_format = inspected
        num_classes = len(names)
        has_validation = "validation" in sources
    else:
        label_format = _static_label_format(folder)
        if label_format is None:
            raise ValueError(
                f"Cannot describe image folder {folder.directory}: it is not "
                "here, so its number of classes is unknown. Pass "
                "num_classes= (or class_names=)."
            )
        names = folder.class_names or ()
        num_classes = len(names) or folder.num_classes
        has_validation = True  # unknown: there may be a valid/ folder
    return _info(
        "image_folder",
        common,
        _unknown_counts(common, has_validation),
        num_classes=num_classes,
        input_shape=folder.input_shape,
        class_names=tuple(names),
        label_format=label_format,
    )


# ---------------------------------------------------------------------------
# Registry


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A dataset: its option parser, loader and static describer."""

    options: object  # (**dataset options) -> dict of validated kwargs
    load: object  # (common, **kwargs) -> LoadedData
    describe: object  # (common, **kwargs) -> DatasetInfo


_SPECS = {
    "cifar10": _Spec(
        _data_dir_options,
        _array_loader("cifar10", _cifar10_arrays),
        _fixed_describe("cifar10", (32, 32, 3), CIFAR10_CLASS_NAMES),
    ),
    "cifar100": _Spec(
        _cifar100_options,
        _array_loader("cifar100", _cifar100_arrays),
        _fixed_describe(
            "cifar100",
            (32, 32, 3),
            lambda data_dir, label_mode: _cifar100_class_names(label_mode),
        ),
    ),
    "digits": _Spec(
        _digits_options,
        _array_loader("digits", _digits_arrays, value_max=16.0),
        _describe_digits,
    ),
    "fashion_mnist": _Spec(
        _data_dir_options,
        _array_loader("fashion_mnist", _fashion_mnist_arrays),
        _fixed_describe("fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASS_NAMES),
    ),
    "image_folder": _Spec(
        _image_folder_options, _load_image_folder, _describe_image_folder
    ),
}
assert tuple(sorted(_SPECS)) == DATASETS
