"""What `kdtrain.data.load` returns, and the errors of reading datasets."""

import dataclasses
from typing import Optional

import tensorflow as tf


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
