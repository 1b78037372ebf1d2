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
import inspect

from kdtrain.data import cifar
from kdtrain.data import digits
from kdtrain.data import fashion_mnist
from kdtrain.data import image_folder
from kdtrain.data.augment import AUGMENT_PRESETS
from kdtrain.data.augment import augmentation
from kdtrain.data.cifar import CIFAR10_CLASS_NAMES
from kdtrain.data.fashion_mnist import FASHION_MNIST_CLASS_NAMES
from kdtrain.data.fashion_mnist import read_idx
from kdtrain.data.info import DataFormatError
from kdtrain.data.info import DatasetInfo
from kdtrain.data.info import DatasetNotFoundError
from kdtrain.data.info import LoadedData
from kdtrain.data.options import COMMON_OPTIONS
from kdtrain.data.options import SCALINGS
from kdtrain.data.options import common_options
from kdtrain.data.splits import TEST_SPLIT_SEED

__all__ = [
    "AUGMENT_PRESETS", "CIFAR10_CLASS_NAMES", "DATASETS", "DataFormatError",
    "DatasetInfo", "DatasetNotFoundError", "FASHION_MNIST_CLASS_NAMES",
    "LoadedData", "SCALINGS", "TEST_SPLIT_SEED", "augmentation", "available",
    "describe", "load", "read_idx",
]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its option parser, loader and static describer."""

    options: object  # (**dataset options) -> dict of validated kwargs
    load: object  # (common, **kwargs) -> LoadedData
    describe: object  # (common, **kwargs) -> DatasetInfo


_SPECS = {
    "cifar10": DatasetSpec(*cifar.CIFAR10),
    "cifar100": DatasetSpec(*cifar.CIFAR100),
    "digits": DatasetSpec(*digits.DIGITS),
    "fashion_mnist": DatasetSpec(*fashion_mnist.FASHION_MNIST),
    "image_folder": DatasetSpec(*image_folder.IMAGE_FOLDER),
}
DATASETS = tuple(sorted(_SPECS))


def available():
    """Lists the dataset names accepted by `load()`.

    Returns:
        A list of strings.

    Example:

    >>> "fashion_mnist" in available()
    True
    """
    return list(DATASETS)


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



def _parse_options(name, options):
    """Validates `load()` / `describe()` options, reading no files.

    Returns:
        `(spec, common, dataset_options)`: the dataset's `DatasetSpec`, the
        common options as a `CommonOptions` and the validated dataset
        options (keyword arguments of `spec.load` and `spec.describe`).
    """
    if name not in _SPECS:
        raise ValueError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}."
        )
    spec = _SPECS[name]
    own = tuple(inspect.signature(spec.options).parameters)
    unknown = sorted(set(options) - set(own) - set(COMMON_OPTIONS))
    if unknown:
        raise TypeError(
            f"Dataset {name!r} got unknown option(s): {', '.join(unknown)}. "
            f"Valid options: {', '.join(own + COMMON_OPTIONS)}."
        )
    common = common_options(
        **{k: v for k, v in options.items() if k in COMMON_OPTIONS}
    )
    dataset_options = spec.options(
        **{k: v for k, v in options.items() if k in own}
    )
    return spec, common, dataset_options
