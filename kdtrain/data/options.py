"""The options every dataset takes, checked once where they enter."""

import dataclasses
import inspect
import numbers
import os

from kdtrain import validation
from kdtrain.data.augment import resolve_augment

SCALINGS = ("rescale", "normalize", "none")


@dataclasses.dataclass(frozen=True)
class CommonOptions:
    batch_size: int
    validation_split: float
    seed: int
    shuffle: bool
    augment: object
    scaling: str
    train_size: int
    validation_size: int
    test_size: int


def common_options(
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
    batch_size = validation.integer("batch_size", batch_size, 1)
    if (
        not isinstance(validation_split, numbers.Real)
        or not 0 <= validation_split < 1
    ):
        raise ValueError(
            "`validation_split` must be a float in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    seed = validation.integer("seed", seed)
    if scaling not in SCALINGS:
        raise ValueError(
            f"`scaling` must be one of {SCALINGS}. Received: scaling={scaling!r}"
        )
    augment = resolve_augment(augment, seed)
    return CommonOptions(
        batch_size=batch_size,
        validation_split=float(validation_split),
        seed=seed,
        shuffle=bool(shuffle),
        augment=augment,
        scaling=scaling,
        train_size=validation.integer("train_size", train_size, 1,
                                      allow_none=True),
        validation_size=validation.integer("validation_size",
                                           validation_size, 1,
                                           allow_none=True),
        test_size=validation.integer("test_size", test_size, 1,
                                     allow_none=True),
    )


COMMON_OPTIONS = tuple(inspect.signature(common_options).parameters)


def check_fraction(arg, value):
    if not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(
            f"`{arg}` must be a float in (0, 1). Received: {arg}={value!r}"
        )
    return float(value)


def check_path(arg, value):
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"`{arg}` must be a path (str or os.PathLike) or None. "
            f"Received: {arg}={value!r}"
        )
    return value


def data_dir_options(data_dir=None):
    """The options of a dataset read from `data_dir` (or keras' cache)."""
    return {"data_dir": check_path("data_dir", data_dir)}
