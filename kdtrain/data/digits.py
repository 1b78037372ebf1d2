"""scikit-learn's digits: 1,797 8x8 images, offline."""

import math

from kdtrain.data.options import check_fraction
from kdtrain.data.pipeline import array_loader
from kdtrain.data.pipeline import info
from kdtrain.data.splits import TEST_SPLIT_SEED
from kdtrain.data.splits import plan_splits
from kdtrain.data.splits import split_counts

DIGITS_NUM_SAMPLES = 1797  # scikit-learn's load_digits()
DIGITS_CLASS_NAMES = tuple(str(i) for i in range(10))


def _digits_options(test_split=0.2):
    return {"test_split": check_fraction("test_split", test_split)}


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
    return info(
        "digits",
        common,
        split_counts(plan_splits(common, sizes)),
        num_classes=len(DIGITS_CLASS_NAMES),
        input_shape=(8, 8, 1),
        class_names=DIGITS_CLASS_NAMES,
        label_format="sparse",
    )


DIGITS = (_digits_options,
          array_loader("digits", _digits_arrays, value_max=16.0),
          _describe_digits)
