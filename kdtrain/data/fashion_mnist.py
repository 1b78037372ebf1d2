"""Fashion-MNIST from IDX files: a folder, Debian's package, or keras."""

import gzip
import pathlib
import zlib

import keras
import numpy as np

from kdtrain.data.info import DataFormatError
from kdtrain.data.info import DatasetNotFoundError
from kdtrain.data.options import data_dir_options
from kdtrain.data.pipeline import array_loader
from kdtrain.data.pipeline import fixed_describe

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
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


FASHION_MNIST = (
    data_dir_options,
    array_loader("fashion_mnist", _fashion_mnist_arrays),
    fixed_describe("fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASS_NAMES),
)
