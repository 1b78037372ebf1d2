"""CIFAR-10 and CIFAR-100 from their python batches, read safely."""

import pathlib
import pickle

import keras
import numpy as np

from kdtrain.data.info import DataFormatError
from kdtrain.data.info import DatasetNotFoundError
from kdtrain.data.options import check_path
from kdtrain.data.options import data_dir_options
from kdtrain.data.pipeline import array_loader
from kdtrain.data.pipeline import fixed_describe

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
    return {"data_dir": check_path("data_dir", data_dir), "label_mode": label_mode}


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


CIFAR10 = (
    data_dir_options,
    array_loader("cifar10", _cifar10_arrays),
    fixed_describe("cifar10", (32, 32, 3), CIFAR10_CLASS_NAMES),
)
CIFAR100 = (
    _cifar100_options,
    array_loader("cifar100", _cifar100_arrays),
    fixed_describe(
        "cifar100",
        (32, 32, 3),
        lambda data_dir, label_mode: _cifar100_class_names(label_mode),
    ),
)
