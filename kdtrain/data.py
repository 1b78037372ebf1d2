"""Datasets as batched, prefetched `tf.data` pipelines with metadata.

`load(name, **options)` returns a `LoadedData` with `train`, `validation`
and `test` datasets of `(images, labels)` batches and a `DatasetInfo`.

Labels are sparse `int32` class indices of shape `(batch,)` for
multi-class data (`info.label_format == "sparse"`) and `float32` 0/1 of
shape `(batch, 1)` for two-class image folders (`"binary"`, matching a
one-unit sigmoid/logit head and `keras.losses.BinaryCrossentropy`).
"""

import dataclasses
import gzip
import numbers
import os
import pathlib
import pickle
import zlib

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
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

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
    """Metadata of a loaded dataset.

    Attributes:
        name: Dataset name passed to `load()`.
        num_classes: Number of classes (2 for binary data).
        input_shape: `(height, width, channels)` of one image.
        class_names: Tuple of class names, index = label.
        label_format: `"sparse"` (int32 class indices, shape `(batch,)`)
            or `"binary"` (float32 0/1, shape `(batch, 1)`).
        num_train: Number of training samples.
        num_validation: Number of validation samples (0 if none).
        num_test: Number of test samples.
        augmented: Whether the training pipeline applies random
            augmentation (then each epoch sees different images).
        scaling: `"rescale"`, `"normalize"` or `"none"`.
        normalization_mean: Per-channel mean of the rescaled training
            images when `scaling="normalize"`, else `None`.
        normalization_std: Matching per-channel standard deviation.
    """

    name: str
    num_classes: int
    input_shape: tuple
    class_names: tuple
    label_format: str
    num_train: int
    num_validation: int
    num_test: int
    augmented: bool
    scaling: str = "rescale"
    normalization_mean: tuple = None
    normalization_std: tuple = None

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
            (as in `keras.utils.image_dataset_from_directory`), plus
            `test_split=0.2`, `cache=True` (decoded images in memory; a
            path caches to that file; `False` disables) and
            `validate_images=True` (check each file with PIL up front).
            Layouts: `root/train/` + `root/test/` (validation carved from
            train), `root/train/` + `root/valid/` (or `validation/`) +
            `root/test/`, or a plain folder of class folders (test and
            validation carved out).

    Args:
        name: Dataset name, see `available()`.
        **options: See above.

    Returns:
        A `LoadedData` with `train`, `validation` (or `None`) and `test`
        datasets of `(images, labels)` batches (images float32
        `(batch, height, width, channels)`) and `info`, a `DatasetInfo`.

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
    loaders = {
        "digits": _load_digits,
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": _load_cifar10,
        "cifar100": _load_cifar100,
        "image_folder": _load_image_folder,
    }
    if name not in loaders:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}."
        )
    return loaders[name](**options)


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
    def positive_int(arg, value, allow_none=False):
        if value is None and allow_none:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value <= 0
        ):
            raise ValueError(
                f"`{arg}` must be a positive integer"
                f"{' or None' if allow_none else ''}. "
                f"Received: {arg}={value!r}"
            )
        return int(value)

    batch_size = positive_int("batch_size", batch_size)
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
        train_size=positive_int("train_size", train_size, True),
        validation_size=positive_int("validation_size", validation_size, True),
        test_size=positive_int("test_size", test_size, True),
    )


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


def _encode_labels(y, label_format):
    y = np.asarray(y).reshape(-1)
    if label_format == "binary":
        return y.astype("float32").reshape(-1, 1)
    return y.astype("int32")


def _from_arrays(
    name,
    common,
    *,
    train,
    test,
    class_names,
    value_max,
    validation=None,
    label_format="sparse",
):
    """Builds `LoadedData` from `(x, y)` numpy pairs (x: NHWC)."""
    x_train, y_train = train
    x_test, y_test = test
    if validation is None and common.validation_split > 0:
        keep, held = _split_indices(
            len(x_train), common.validation_split, common.seed
        )
        validation = (x_train[held], y_train[held])
        x_train, y_train = x_train[keep], y_train[keep]
    splits = {"train": (x_train, y_train), "test": (x_test, y_test)}
    if validation is not None:
        splits["validation"] = validation
    caps = {
        "train": (common.train_size, common.seed),
        "validation": (common.validation_size, common.seed + 1),
        "test": (common.test_size, TEST_SPLIT_SEED),
    }
    for split, (x, y) in list(splits.items()):
        size, seed = caps[split]
        idx = _subset_indices(len(x), size, seed)
        if len(idx) != len(x):
            x, y = x[idx], y[idx]
        splits[split] = (x, _encode_labels(y, label_format))

    preprocess = _Preprocess(value_max, common.scaling, common.augment)
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
    if common.scaling == "normalize":
        x, y = splits["train"]
        unshuffled = _array_batches(x, y, 256, shuffle=False, seed=None)
        mean, std = preprocess.adapt(unshuffled)
    else:
        mean = std = None
    datasets = {
        split: _finish(ds, preprocess, training=split == "train")
        for split, ds in raw.items()
    }
    info = DatasetInfo(
        name=name,
        num_classes=len(class_names),
        input_shape=tuple(int(d) for d in splits["train"][0].shape[1:]),
        class_names=tuple(class_names),
        label_format=label_format,
        num_train=len(splits["train"][0]),
        num_validation=len(splits["validation"][0])
        if "validation" in splits
        else 0,
        num_test=len(splits["test"][0]),
        augmented=common.augment is not None,
        scaling=common.scaling,
        normalization_mean=mean,
        normalization_std=std,
    )
    return LoadedData(
        train=datasets["train"],
        validation=datasets.get("validation"),
        test=datasets["test"],
        info=info,
    )


# ---------------------------------------------------------------------------
# digits


def _load_digits(*, test_split=0.2, **common):
    common = _common(**common)
    test_split = _check_fraction("test_split", test_split)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype("uint8")[..., None]
    y = digits.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_split, stratify=y, random_state=TEST_SPLIT_SEED
    )
    return _from_arrays(
        "digits",
        common,
        train=(x_train, y_train),
        test=(x_test, y_test),
        class_names=[str(i) for i in range(10)],
        value_max=16.0,
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


def _load_fashion_mnist(*, data_dir=None, **common):
    common = _common(**common)
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
    return _from_arrays(
        "fashion_mnist",
        common,
        train=(x_train[..., None], y_train),
        test=(x_test[..., None], y_test),
        class_names=FASHION_MNIST_CLASS_NAMES,
        value_max=255.0,
    )


# ---------------------------------------------------------------------------
# CIFAR (python pickles)


def _read_cifar_pickle(path):
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
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


def _load_cifar10(*, data_dir=None, **common):
    common = _common(**common)
    class_names = CIFAR10_CLASS_NAMES
    if data_dir is None:
        (x_train, y_train), (x_test, y_test) = _keras_dataset(
            keras.datasets.cifar10.load_data, "cifar10"
        )
    else:
        root = _find_cifar_dir(data_dir, "cifar-10-batches-py", "data_batch_1")
        xs, ys = [], []
        for i in range(1, 6):
            path = root / f"data_batch_{i}"
            batch = _read_cifar_pickle(path)
            xs.append(_cifar_images(batch, path))
            ys.append(_cifar_labels(batch, "labels", path, len(xs[-1])))
        x_train, y_train = np.concatenate(xs), np.concatenate(ys)
        path = root / "test_batch"
        batch = _read_cifar_pickle(path)
        x_test = _cifar_images(batch, path)
        y_test = _cifar_labels(batch, "labels", path, len(x_test))
        if (root / "batches.meta").is_file():
            meta = _read_cifar_pickle(root / "batches.meta")
            class_names = _decode_names(meta.get("label_names", class_names))
    return _from_arrays(
        "cifar10",
        common,
        train=(x_train, np.asarray(y_train).reshape(-1)),
        test=(x_test, np.asarray(y_test).reshape(-1)),
        class_names=class_names,
        value_max=255.0,
    )


def _load_cifar100(*, data_dir=None, label_mode="fine", **common):
    common = _common(**common)
    if label_mode not in ("fine", "coarse"):
        raise ValueError(
            '`label_mode` must be "fine" or "coarse". '
            f"Received: label_mode={label_mode!r}"
        )
    num_classes = 100 if label_mode == "fine" else 20
    class_names = tuple(str(i) for i in range(num_classes))
    if data_dir is None:
        (x_train, y_train), (x_test, y_test) = _keras_dataset(
            keras.datasets.cifar100.load_data, "cifar100", label_mode=label_mode
        )
    else:
        root = _find_cifar_dir(data_dir, "cifar-100-python", "train")
        key = f"{label_mode}_labels"
        path = root / "train"
        batch = _read_cifar_pickle(path)
        x_train = _cifar_images(batch, path)
        y_train = _cifar_labels(batch, key, path, len(x_train))
        path = root / "test"
        batch = _read_cifar_pickle(path)
        x_test = _cifar_images(batch, path)
        y_test = _cifar_labels(batch, key, path, len(x_test))
        if (root / "meta").is_file():
            meta = _read_cifar_pickle(root / "meta")
            names = meta.get(f"{label_mode}_label_names")
            if names is not None and len(names) == num_classes:
                class_names = _decode_names(names)
    return _from_arrays(
        "cifar100",
        common,
        train=(x_train, np.asarray(y_train).reshape(-1)),
        test=(x_test, np.asarray(y_test).reshape(-1)),
        class_names=class_names,
        value_max=255.0,
    )


# ---------------------------------------------------------------------------
# Image folders


def _index_folder(directory, class_names, follow_links):
    """Sorted image paths and int labels of a folder of class folders."""
    ds = keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="int",
        class_names=class_names,
        batch_size=None,
        shuffle=False,
        follow_links=follow_links,
        verbose=False,
    )
    names = list(ds.class_names)
    lookup = {name: i for i, name in enumerate(names)}
    root = pathlib.Path(directory)
    paths = [str(p) for p in ds.file_paths]
    labels = [lookup[pathlib.Path(p).relative_to(root).parts[0]] for p in paths]
    return paths, np.asarray(labels, dtype="int64"), names


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


def _check_two_classes(directory, names):
    if len(names) < 2:
        raise ValueError(
            f"Image folder {directory} has a single class ({names}); "
            "classification needs at least 2 class sub-folders."
        )


def _split_layout(root):
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "train" not in subdirs:
        return None
    test = subdirs.get("test")
    valid = subdirs.get("valid", subdirs.get("validation"))
    if test is None and valid is None:
        return None
    return subdirs["train"], valid, test


def _load_image_folder(
    *,
    directory=None,
    image_size=(256, 256),
    color_mode="rgb",
    label_mode=None,
    class_names=None,
    interpolation="bilinear",
    crop_to_aspect_ratio=False,
    pad_to_aspect_ratio=False,
    follow_links=False,
    test_split=0.2,
    cache=True,
    validate_images=True,
    **common,
):
    common = _common(**common)
    if directory is None:
        raise ValueError('"image_folder" needs `directory=` (a folder path).')
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise DatasetNotFoundError(f"Image folder not found: {directory}")
    if isinstance(image_size, numbers.Integral):
        image_size = (int(image_size), int(image_size))
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(
            "`image_size` must be (height, width) of positive ints. "
            f"Received: image_size={image_size!r}"
        )
    channels = {"grayscale": 1, "rgb": 3, "rgba": 4}.get(color_mode)
    if channels is None:
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
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ValueError(
            "Only one of `crop_to_aspect_ratio` and `pad_to_aspect_ratio` "
            "can be True."
        )

    layout = _split_layout(root)
    if layout is not None:
        train_dir, valid_dir, test_dir = layout
        train_paths, train_y, names = _index_folder(
            train_dir, class_names, follow_links
        )
        _check_two_classes(train_dir, names)
        splits = {"train": (train_paths, train_y)}
        for split, folder in (("validation", valid_dir), ("test", test_dir)):
            if folder is not None:
                paths, y, _ = _index_folder(folder, names, follow_links)
                splits[split] = (paths, y)
        if test_dir is None:
            # train/ + valid/ only: the test split is carved from train.
            test_split = _check_fraction("test_split", test_split)
            paths, y = splits["train"]
            keep, held = _split_indices(len(paths), test_split, TEST_SPLIT_SEED)
            splits["test"] = ([paths[i] for i in held], y[held])
            splits["train"] = ([paths[i] for i in keep], y[keep])
    else:
        all_paths, all_y, names = _index_folder(root, class_names, follow_links)
        _check_two_classes(directory, names)
        test_split = _check_fraction("test_split", test_split)
        keep, held = _split_indices(len(all_paths), test_split, TEST_SPLIT_SEED)
        splits = {
            "train": ([all_paths[i] for i in keep], all_y[keep]),
            "test": ([all_paths[i] for i in held], all_y[held]),
        }
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(
            f'`label_mode="binary"` needs exactly 2 classes; {directory} '
            f"has {len(names)}: {names}"
        )
    if label_mode is None:
        label_mode = "binary" if len(names) == 2 else "int"
    label_format = "binary" if label_mode == "binary" else "sparse"

    if "validation" not in splits and common.validation_split > 0:
        paths, y = splits["train"]
        keep, held = _split_indices(
            len(paths), common.validation_split, common.seed
        )
        splits["validation"] = ([paths[i] for i in held], y[held])
        splits["train"] = ([paths[i] for i in keep], y[keep])
    caps = {
        "train": (common.train_size, common.seed),
        "validation": (common.validation_size, common.seed + 1),
        "test": (common.test_size, TEST_SPLIT_SEED),
    }
    for split, (paths, y) in list(splits.items()):
        if not paths:
            raise ValueError(
                f"The {split} split of image folder {directory} is empty."
            )
        size, seed = caps[split]
        idx = _subset_indices(len(paths), size, seed)
        if split == "train" and common.shuffle:
            # Cache in a random order; the shuffle buffer then mixes more.
            idx = np.random.default_rng(common.seed).permutation(idx)
        splits[split] = (
            [paths[i] for i in idx],
            _encode_labels(y[idx], label_format),
        )
    if validate_images:
        for paths, _ in splits.values():
            _validate_images(paths)

    def load_image(path, label):
        raw = tf.io.read_file(path)
        image = tf.io.decode_image(
            raw, channels=channels, expand_animations=False
        )
        image.set_shape((None, None, channels))
        if crop_to_aspect_ratio:
            image = keras.preprocessing.image.smart_resize(
                image, image_size, interpolation=interpolation
            )
        elif pad_to_aspect_ratio:
            image = tf.image.resize_with_pad(
                image, image_size[0], image_size[1], method=interpolation
            )
        else:
            image = tf.image.resize(image, image_size, method=interpolation)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image.set_shape(image_size + (channels,))
        return image, label

    def raw_batches(split, paths, y, shuffle):
        ds = tf.data.Dataset.from_tensor_slices((paths, y))
        ds = ds.map(load_image, num_parallel_calls=tf.data.AUTOTUNE)
        if cache:
            if isinstance(cache, (str, os.PathLike)):
                ds = ds.cache(f"{os.fspath(cache)}.{split}")
            else:
                ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(
                min(len(paths), 8192),
                seed=common.seed,
                reshuffle_each_iteration=True,
            )
        return ds.batch(common.batch_size), ds

    preprocess = _Preprocess(255.0, common.scaling, common.augment)
    raw = {}
    unbatched = {}
    for split, (paths, y) in splits.items():
        raw[split], unbatched[split] = raw_batches(
            split,
            paths,
            y,
            shuffle=common.shuffle and split == "train",
        )
    if common.scaling == "normalize":
        source = unbatched["train"]
        mean, std = preprocess.adapt(source.batch(256))
    else:
        mean = std = None
    datasets = {
        split: _finish(ds, preprocess, training=split == "train")
        for split, ds in raw.items()
    }
    info = DatasetInfo(
        name="image_folder",
        num_classes=len(names),
        input_shape=image_size + (channels,),
        class_names=tuple(names),
        label_format=label_format,
        num_train=len(splits["train"][0]),
        num_validation=len(splits["validation"][0])
        if "validation" in splits
        else 0,
        num_test=len(splits["test"][0]),
        augmented=common.augment is not None,
        scaling=common.scaling,
        normalization_mean=mean,
        normalization_std=std,
    )
    return LoadedData(
        train=datasets["train"],
        validation=datasets.get("validation"),
        test=datasets["test"],
        info=info,
    )
