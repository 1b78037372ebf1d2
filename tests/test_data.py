"""Tests for kdtrain.data loaders, on small data written by the tests."""

import dataclasses
import gzip
import os
import pickle
import struct

import keras
import numpy as np
import pytest
from PIL import Image

from kdtrain import data
from kdtrain.data import fashion_mnist
from kdtrain.data import image_folder


def collect(ds):
    """Concatenates a dataset of (x, y) batches into numpy arrays."""
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def sorted_rows(x):
    """Images as sorted flat rows, to compare splits as multisets."""
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


# ---------------------------------------------------------------------------
# IDX helpers (an independent writer of the format)


def write_idx(path, array, compress=True, magic=None):
    array = np.ascontiguousarray(array, dtype="uint8")
    if magic is None:
        magic = 0x0800 + array.ndim
    header = struct.pack(">I", magic) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion(tmp_path, n_train=40, n_test=15, compress=True):
    rng = np.random.default_rng(3)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype="uint8"),
        "y_train": rng.integers(0, 10, n_train).astype("uint8"),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype="uint8"),
        "y_test": rng.integers(0, 10, n_test).astype("uint8"),
    }
    for key, stem in fashion_mnist.FASHION_MNIST_FILES.items():
        name = stem + (".gz" if compress else "")
        write_idx(tmp_path / name, arrays[key], compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, compress):
    arrays = make_fashion(tmp_path, compress=compress)
    loaded = data.load(
        "fashion_mnist",
        data_dir=tmp_path,
        batch_size=8,
        validation_split=0.25,
        shuffle=False,
        scaling="none",
    )
    info = loaded.info
    assert info.input_shape == (28, 28, 1)
    assert info.num_classes == 10 and info.class_names[0] == "T-shirt/top"
    assert info.label_format == "sparse"
    assert (info.num_train, info.num_validation, info.num_test) == (30, 10, 15)
    assert not info.augmented
    x_test, y_test = collect(loaded.test)
    np.testing.assert_array_equal(x_test[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert y_test.dtype == np.int32
    x_tr, y_tr = collect(loaded.train)
    x_va, y_va = collect(loaded.validation)
    # Train + validation is a partition of the original training data,
    # each keeping the original order (shuffle=False).
    both = np.concatenate([x_tr, x_va])[..., 0]
    np.testing.assert_array_equal(sorted_rows(both), sorted_rows(arrays["x_train"]))
    index = {arrays["x_train"][i].tobytes(): i for i in range(40)}
    tr_idx = [index[img[..., 0].astype("uint8").tobytes()] for img in x_tr]
    assert tr_idx == sorted(tr_idx)
    np.testing.assert_array_equal(y_tr, arrays["y_train"][tr_idx])


def test_fashion_mnist_rescale_and_sizes(tmp_path):
    arrays = make_fashion(tmp_path)
    loaded = data.load(
        "fashion_mnist", data_dir=tmp_path, train_size=12, validation_size=3,
        test_size=5, batch_size=4,
    )
    info = loaded.info
    assert (info.num_train, info.num_validation, info.num_test) == (12, 3, 5)
    x_test, _ = collect(loaded.test)
    assert x_test.dtype == np.float32 and x_test.shape == (5, 28, 28, 1)
    assert x_test.min() >= 0 and x_test.max() <= 1
    rows = {r.tobytes() for r in arrays["x_test"]}
    for img in x_test:
        assert np.round(img[..., 0] * 255).astype("uint8").tobytes() in rows
    # Deterministic: a second load gives the same subsets.
    again = data.load(
        "fashion_mnist", data_dir=tmp_path, train_size=12, validation_size=3,
        test_size=5, batch_size=4, shuffle=False,
    )
    np.testing.assert_array_equal(collect(again.test)[0], x_test)
    first = sorted_rows(collect(loaded.train)[0])
    np.testing.assert_array_equal(sorted_rows(collect(again.train)[0]), first)


def test_fashion_mnist_corrupt_files(tmp_path):
    make_fashion(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, short data
    with pytest.raises(data.DataFormatError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.load("fashion_mnist", data_dir=tmp_path)
    target.write_bytes(gzip.compress(raw)[:500])  # truncated gzip stream
    with pytest.raises(data.DataFormatError, match="train-images-idx3-ubyte.gz"):
        data.load("fashion_mnist", data_dir=tmp_path)
    write_idx(target, np.zeros((40, 28, 28)), magic=0x12345678)
    with pytest.raises(data.DataFormatError, match="bad magic number 12345678"):
        data.load("fashion_mnist", data_dir=tmp_path)
    write_idx(target, np.zeros((40, 784)))  # a 2-d file: magic 0x0802
    with pytest.raises(data.DataFormatError, match="0x00000803"):
        data.load("fashion_mnist", data_dir=tmp_path)
    write_idx(target, np.zeros((39, 28, 28)))
    with pytest.raises(data.DataFormatError, match="39 images but .* 40 labels"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_read_idx_matches_writer(tmp_path):
    array = np.arange(2 * 3 * 5, dtype="uint8").reshape(2, 3, 5)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), array)


def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    calls = []

    def offline(*args, **kwargs):
        calls.append(1)
        raise OSError("URL fetch failure (no network)")

    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIRS", (str(empty),))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion_mnist")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "data_dir=" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "keras.datasets.fashion_mnist.load_data()" in message
    assert "URL fetch failure" in message
    assert calls == [1]
    # An explicit data_dir missing the files fails without fallbacks.
    with pytest.raises(data.DatasetNotFoundError, match="lacks some of the four files"):
        data.load("fashion_mnist", data_dir=empty)
    assert calls == [1]


def test_fashion_mnist_search_dirs(tmp_path, monkeypatch):
    assert fashion_mnist.FASHION_MNIST_DIRS == ("/usr/share/datasets/fashion-mnist",)
    arrays = make_fashion(tmp_path)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIRS", (str(tmp_path / "no"), str(tmp_path)))
    monkeypatch.setattr(
        keras.datasets.fashion_mnist, "load_data",
        lambda: pytest.fail("keras fallback used although files exist"),
    )
    loaded = data.load("fashion_mnist", validation_split=0, shuffle=False, scaling="none")
    x, y = collect(loaded.train)
    np.testing.assert_array_equal(x[..., 0], arrays["x_train"])
    assert loaded.validation is None and loaded.info.num_validation == 0


# ---------------------------------------------------------------------------
# CIFAR (fake pickles in the real python format)


def cifar_batch(rng, n, label_keys):
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype="uint8")}
    for key, classes in label_keys.items():
        batch[key] = [int(v) for v in rng.integers(0, classes, n)]
    return batch


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_pixel(row, i, y, x, c):
    """Pixel (y, x) channel c of CIFAR image `row`: planes R, G, B."""
    return row[c * 1024 + y * 32 + x]


def test_cifar10_from_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [cifar_batch(rng, 3, {b"labels": 10}) for _ in range(5)]
    for i, batch in enumerate(batches, start=1):
        dump(folder / f"data_batch_{i}", batch)
    test = cifar_batch(rng, 4, {b"labels": 10})
    dump(folder / "test_batch", test)
    names = [f"class{i}".encode() for i in range(10)]
    dump(folder / "batches.meta", {b"label_names": names})

    loaded = data.load(
        "cifar10", data_dir=tmp_path, validation_split=0, shuffle=False,
        scaling="none", batch_size=5,
    )
    info = loaded.info
    assert info.input_shape == (32, 32, 3)
    assert info.class_names == tuple(f"class{i}" for i in range(10))
    assert (info.num_train, info.num_test) == (15, 4)
    x, y = collect(loaded.train)
    rows = np.concatenate([b[b"data"] for b in batches])
    for i, (py, px, c) in enumerate([(0, 0, 0), (5, 31, 1), (31, 2, 2)] * 5):
        assert x[i, py, px, c] == cifar_pixel(rows[i], i, py, px, c)
    np.testing.assert_array_equal(y, sum((b[b"labels"] for b in batches), []))
    xt, yt = collect(loaded.test)
    assert xt[3, 7, 9, 2] == cifar_pixel(test[b"data"][3], 3, 7, 9, 2)
    np.testing.assert_array_equal(yt, test[b"labels"])

    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(data.DataFormatError, match="test_batch"):
        data.load("cifar10", data_dir=folder)


class _RunsCode:
    """Unpickles as a call of `os.system`: what a crafted batch would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_batch_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", cifar_batch(rng, 3, {b"labels": 10}))
    marker = tmp_path / "code-ran"
    crafted = cifar_batch(rng, 4, {b"labels": 10})
    crafted[b"batch_label"] = _RunsCode(marker)
    dump(folder / "test_batch", crafted)
    # The file really would run code with an unrestricted unpickler.
    with open(folder / "test_batch", "rb") as f:
        assert b"system" in f.read()
    with pytest.raises(data.DataFormatError, match="test_batch.*system"):
        data.load("cifar10", data_dir=folder)
    assert not marker.exists()
    # A genuine batch with NumPy arrays (not lists) still loads.
    genuine = cifar_batch(rng, 4, {b"labels": 10})
    genuine[b"labels"] = np.asarray(genuine[b"labels"], dtype="int64")
    dump(folder / "test_batch", genuine)
    loaded = data.load("cifar10", data_dir=folder, validation_split=0)
    assert loaded.info.num_test == 4


def test_cifar100_from_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    keys = {b"fine_labels": 100, b"coarse_labels": 20}
    train, test = cifar_batch(rng, 10, keys), cifar_batch(rng, 5, keys)
    dump(folder / "train", train)
    dump(folder / "test", test)
    dump(
        folder / "meta",
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
        },
    )
    fine = data.load("cifar100", data_dir=folder, validation_split=0, shuffle=False)
    assert fine.info.num_classes == 100 and fine.info.class_names[99] == "f99"
    np.testing.assert_array_equal(collect(fine.train)[1], train[b"fine_labels"])
    coarse = data.load(
        "cifar100", data_dir=tmp_path, label_mode="coarse", validation_split=0.2
    )
    assert coarse.info.num_classes == 20 and coarse.info.class_names[0] == "c0"
    assert (coarse.info.num_train, coarse.info.num_validation) == (8, 2)
    _, yt = collect(coarse.test)
    np.testing.assert_array_equal(yt, test[b"coarse_labels"])
    with pytest.raises(ValueError, match='"fine" or "coarse"'):
        data.load("cifar100", data_dir=folder, label_mode="medium")


def test_cifar_keras_path_without_network(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (20, 32, 32, 3), dtype="uint8")
    y_train = rng.integers(0, 10, (20, 1))
    fake = ((x_train, y_train), (x_train[:6], y_train[:6]))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: fake)
    loaded = data.load("cifar10", validation_split=0.25, batch_size=4)
    assert (loaded.info.num_train, loaded.info.num_validation) == (15, 5)
    _, yt = collect(loaded.test)
    assert yt.shape == (6,)
    np.testing.assert_array_equal(yt, y_train[:6, 0])

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.cifar100, "load_data", offline)
    with pytest.raises(data.DatasetNotFoundError, match="data_dir="):
        data.load("cifar100")
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------------------
# digits


def test_digits_splits_and_seeds():
    from sklearn.datasets import load_digits

    full = load_digits().images
    a = data.load("digits", seed=0, batch_size=100, scaling="none", shuffle=False)
    b = data.load("digits", seed=1, batch_size=100, scaling="none", shuffle=False)
    info = a.info
    assert info.input_shape == (8, 8, 1) and info.num_classes == 10
    assert info.num_test == 360
    assert info.num_train + info.num_validation + info.num_test == len(full)
    parts = [collect(ds)[0] for ds in (a.train, a.validation, a.test)]
    np.testing.assert_array_equal(
        sorted_rows(np.concatenate(parts)[..., 0]), sorted_rows(full)
    )
    # The test split does not follow `seed`; the validation split does.
    np.testing.assert_array_equal(collect(a.test)[0], collect(b.test)[0])
    assert not np.array_equal(
        sorted_rows(collect(a.validation)[0]), sorted_rows(collect(b.validation)[0])
    )
    # Stratified test split: 20% of every class (178-183 per class).
    _, y_test = collect(a.test)
    assert np.bincount(y_test, minlength=10).min() >= 35
    rescaled = data.load("digits", batch_size=2000)
    x, _ = collect(rescaled.train)
    assert x.max() == 1.0 and x.min() == 0.0


def test_normalize_uses_training_statistics():
    loaded = data.load("digits", scaling="normalize", batch_size=500, shuffle=False)
    raw = data.load("digits", scaling="rescale", batch_size=500, shuffle=False)
    x_raw, _ = collect(raw.train)
    mean, std = x_raw.mean(), x_raw.std()
    np.testing.assert_allclose(loaded.info.normalization_mean, [mean], rtol=1e-4)
    np.testing.assert_allclose(loaded.info.normalization_std, [std], rtol=1e-4)
    x_norm, _ = collect(loaded.train)
    np.testing.assert_allclose(x_norm, (x_raw - mean) / std, atol=1e-4)
    x_val, _ = collect(loaded.validation)
    x_val_raw, _ = collect(raw.validation)
    np.testing.assert_allclose(x_val, (x_val_raw - mean) / std, atol=1e-4)
    assert loaded.info.scaling == "normalize" and raw.info.normalization_mean is None


# ---------------------------------------------------------------------------
# Augmentation


def test_augmentation_only_on_training_split():
    common = dict(batch_size=64, shuffle=False, seed=0)
    plain = data.load("digits", **common)
    aug = data.load("digits", augment="cifar", **common)
    assert aug.info.augmented and not plain.info.augmented
    for split in ("validation", "test"):
        np.testing.assert_array_equal(
            collect(getattr(aug, split))[0], collect(getattr(plain, split))[0]
        )
    x_plain, y_plain = collect(plain.train)
    x_aug, y_aug = collect(aug.train)
    np.testing.assert_array_equal(y_aug, y_plain)
    changed = np.abs(x_aug - x_plain).reshape(len(x_aug), -1).max(axis=1) > 1e-3
    assert changed.mean() > 0.5
    # Random: a second epoch differs from the first.
    assert not np.array_equal(collect(aug.train)[0], x_aug)


def test_augment_accepts_layers_and_sequential():
    plain = data.load("digits", shuffle=False)
    x_plain, _ = collect(plain.train)
    flip = keras.layers.RandomFlip("horizontal_and_vertical", seed=1)
    negate = keras.layers.Rescaling(-1.0)
    for augment in ([negate], keras.Sequential([negate])):
        loaded = data.load("digits", shuffle=False, augment=augment)
        assert loaded.info.augmented
        np.testing.assert_allclose(collect(loaded.train)[0], -x_plain)
        np.testing.assert_array_equal(
            collect(loaded.test)[0], collect(plain.test)[0]
        )
    flipped = data.load("digits", shuffle=False, augment=[flip])
    assert flipped.info.augmented
    halved = data.load("digits", shuffle=False, augment=lambda x: x * 0.5)
    np.testing.assert_allclose(collect(halved.train)[0], 0.5 * x_plain)
    with pytest.raises(ValueError, match="`augment` must be None"):
        data.load("digits", augment=3)


def test_augmentation_presets():
    cifar = data.augmentation("cifar", seed=0)
    assert [type(l).__name__ for l in cifar.layers] == [
        "RandomRotation", "RandomTranslation", "RandomFlip",
    ]
    assert cifar.layers[0].factor == (-20 / 360, 20 / 360)
    assert cifar.layers[1].height_factor == 0.2
    skin = data.augmentation("skin_cancer")
    assert [type(l).__name__ for l in skin.layers] == [
        "RandomRotation", "RandomZoom", "RandomTranslation",
    ]
    mnist = data.augmentation("mnist")
    assert not any(isinstance(l, keras.layers.RandomFlip) for l in mnist.layers)
    with pytest.raises(ValueError, match="cifar, mnist, skin_cancer"):
        data.augmentation("imagenet")
    with pytest.raises(ValueError, match="cifar, mnist, skin_cancer"):
        data.load("digits", augment="imagenet")


# ---------------------------------------------------------------------------
# Image folders


def write_images(folder, classes, per_class, size=(12, 10), offset=0):
    """PNGs whose red channel encodes the class and green the index."""
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.zeros(size + (3,), dtype="uint8")
            pixels[..., 0] = 40 * (c + 1)
            pixels[..., 1] = offset + i
            pixels[0, 0, 2] = 255
            Image.fromarray(pixels).save(folder / name / f"img_{i:03d}.png")


def test_image_folder_plain_multiclass(tmp_path):
    classes = ["cat", "dog", "fox"]
    write_images(tmp_path, classes, per_class=10)
    loaded = data.load(
        "image_folder", directory=tmp_path, image_size=(12, 10),
        scaling="none", batch_size=4, validation_split=0.2,
    )
    info = loaded.info
    assert info.class_names == tuple(classes)
    assert info.label_format == "sparse" and info.num_classes == 3
    assert info.input_shape == (12, 10, 3)
    assert info.num_test == 6
    assert info.num_train + info.num_validation + info.num_test == 30
    seen = []
    for ds in (loaded.train, loaded.validation, loaded.test):
        x, y = collect(ds)
        assert y.dtype == np.int32 and y.ndim == 1
        # The label matches the folder the image came from.
        np.testing.assert_array_equal(x[:, 3, 3, 0], 40 * (y + 1))
        seen += [(int(a), int(b)) for a, b in zip(y, x[:, 3, 3, 1])]
    assert sorted(seen) == [(c, i) for c in range(3) for i in range(10)]
    rescaled = data.load("image_folder", directory=tmp_path, image_size=(12, 10))
    x, _ = collect(rescaled.test)
    assert x.max() == 1.0 and x.min() == 0.0


def test_image_folder_train_test_binary(tmp_path):
    write_images(tmp_path / "train", ["benign", "malignant"], per_class=8)
    write_images(tmp_path / "test", ["benign", "malignant"], per_class=3, offset=100)
    loaded = data.load(
        "image_folder", directory=tmp_path, image_size=(6, 5), batch_size=5,
        validation_split=0.25, augment="skin_cancer", scaling="none",
    )
    info = loaded.info
    assert info.label_format == "binary" and info.output_units == 1
    assert (info.num_train, info.num_validation, info.num_test) == (12, 4, 6)
    assert info.augmented
    x, y = collect(loaded.test)
    assert y.dtype == np.float32 and y.shape == (6, 1)
    np.testing.assert_array_equal(x[:, 3, 2, 0], 40 * (y[:, 0] + 1))
    assert np.all(x[:, 3, 2, 1] >= 100)  # from test/, not train/
    _, y_train = collect(loaded.train)
    assert set(np.unique(y_train)) == {0.0, 1.0}
    int_labels = data.load(
        "image_folder", directory=tmp_path, image_size=(6, 5), label_mode="int"
    )
    assert int_labels.info.label_format == "sparse"


def test_image_folder_train_valid_test(tmp_path):
    classes = [f"bird_{i}" for i in range(3)]
    write_images(tmp_path / "train", classes, per_class=5)
    write_images(tmp_path / "valid", classes, per_class=2, offset=50)
    write_images(tmp_path / "test", classes, per_class=2, offset=100)
    loaded = data.load(
        "image_folder", directory=tmp_path, image_size=(12, 10), scaling="none",
        color_mode="grayscale", cache=str(tmp_path / "cachefile"),
        augment="cifar",
    )
    info = loaded.info
    assert (info.num_train, info.num_validation, info.num_test) == (15, 6, 6)
    assert info.input_shape == (12, 10, 1)
    x_val, y_val = collect(loaded.validation)
    assert x_val.shape == (6, 12, 10, 1)
    # Un-augmented: validation images come out exactly as written.
    gray = np.round(
        0.2989 * 40 * (y_val + 1) + 0.587 * (50 + np.arange(6) % 2)
    )
    np.testing.assert_allclose(x_val[:, 5, 5, 0], gray, atol=1)
    x_again, _ = collect(loaded.validation)
    np.testing.assert_array_equal(x_again, x_val)
    assert list(tmp_path.glob("cachefile.validation*"))


def test_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        data.load("image_folder", directory=empty)
    single = tmp_path / "single"
    write_images(single, ["only"], per_class=3)
    with pytest.raises(ValueError, match="single class"):
        data.load("image_folder", directory=single)
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.load("image_folder", directory=single / "only")
    with pytest.raises(data.DatasetNotFoundError, match="not found"):
        data.load("image_folder", directory=tmp_path / "missing")
    with pytest.raises(ValueError, match="needs `directory=`"):
        data.load("image_folder")

    bad = tmp_path / "bad"
    write_images(bad, ["x", "y"], per_class=4)
    (bad / "y" / "img_002.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    with pytest.raises(data.DataFormatError, match=r"y/img_002\.png"):
        data.load("image_folder", directory=bad, image_size=(8, 8))
    truncated = bad / "x" / "img_001.png"
    (bad / "y" / "img_002.png").unlink()
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(data.DataFormatError, match=r"x/img_001\.png"):
        data.load("image_folder", directory=bad, image_size=(8, 8))
    with pytest.raises(ValueError, match='"int" or "binary"'):
        data.load("image_folder", directory=single, label_mode="categorical")


def test_image_folder_goes_through_keras(tmp_path, monkeypatch):
    write_images(tmp_path / "train", ["a", "b", "c"], per_class=6)
    write_images(tmp_path / "valid", ["a", "b", "c"], per_class=2, offset=50)
    calls = []
    keras_fn = keras.utils.image_dataset_from_directory

    def spy(directory, **kwargs):
        calls.append((str(directory), kwargs))
        return keras_fn(directory, **kwargs)

    monkeypatch.setattr(keras.utils, "image_dataset_from_directory", spy)
    loaded = data.load(
        "image_folder", directory=tmp_path, image_size=(9, 7),
        interpolation="nearest", crop_to_aspect_ratio=True, scaling="none",
        class_names=["c", "a", "b"], test_split=0.3, batch_size=4,
    )
    # One call per source folder, unbatched, with the same class indices.
    folders = sorted(d for d, _ in calls)
    assert folders == [str(tmp_path / "train"), str(tmp_path / "valid")]
    for _, kwargs in calls:
        assert kwargs["batch_size"] is None and kwargs["labels"] == "inferred"
        assert kwargs["class_names"] == ["c", "a", "b"]
        assert kwargs["label_mode"] == "int" and kwargs["image_size"] == (9, 7)
        assert kwargs["interpolation"] == "nearest"
        assert kwargs["crop_to_aspect_ratio"] is True
    info = loaded.info
    assert info.class_names == ("c", "a", "b") and info.input_shape == (9, 7, 3)
    # train/ + valid/ only: the test split is carved out of train/.
    assert (info.num_train, info.num_validation, info.num_test) == (13, 6, 5)
    red_of_label = np.array([40 * 3, 40 * 1, 40 * 2])  # c, a, b
    for split in ("train", "validation", "test"):
        x, y = collect(getattr(loaded, split))
        assert x.dtype == np.float32 and x.shape[1:] == (9, 7, 3)
        np.testing.assert_array_equal(x[:, 4, 3, 0], red_of_label[y])
    assert np.all(collect(loaded.validation)[0][:, 4, 3, 1] >= 50)


def test_image_folder_caps_shuffle_and_normalize(tmp_path):
    write_images(tmp_path, ["neg", "pos"], per_class=20)
    options = dict(
        directory=tmp_path, image_size=(12, 10), scaling="none", batch_size=8,
        train_size=10, validation_size=3, test_size=4, seed=5,
    )
    a, b = data.load("image_folder", **options), data.load("image_folder", **options)
    info = a.info
    assert (info.num_train, info.num_validation, info.num_test) == (10, 3, 4)
    assert info.label_format == "binary"

    def ids(ds):
        x, y = collect(ds)
        assert y.dtype == np.float32 and y.shape == (len(x), 1)
        np.testing.assert_array_equal(x[:, 2, 2, 0], 40 * (y[:, 0] + 1))
        return [(int(r), int(g)) for r, g in x[:, 2, 2, :2]]

    for split in ("validation", "test"):
        # Deterministic subsets in a fixed order.
        assert ids(getattr(a, split)) == ids(getattr(b, split))
        assert ids(getattr(a, split)) == ids(getattr(a, split))
    epochs = [ids(a.train) for _ in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(ids(b.train))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled
    all_ids = epochs[0] + ids(a.validation) + ids(a.test)
    assert len(set(all_ids)) == 17  # disjoint splits
    unshuffled = data.load("image_folder", **options, shuffle=False)
    assert sorted(ids(unshuffled.train)) == sorted(epochs[0])

    norm = data.load(
        "image_folder", directory=tmp_path, image_size=(12, 10),
        scaling="normalize", shuffle=False, batch_size=64,
    )
    raw = data.load(
        "image_folder", directory=tmp_path, image_size=(12, 10),
        shuffle=False, batch_size=64,
    )
    x_raw, _ = collect(raw.train)
    mean, std = x_raw.mean(axis=(0, 1, 2)), x_raw.std(axis=(0, 1, 2))
    np.testing.assert_allclose(norm.info.normalization_mean, mean, rtol=1e-4)
    np.testing.assert_allclose(norm.info.normalization_std, std, rtol=1e-4)
    x_norm, _ = collect(norm.test)
    x_test, _ = collect(raw.test)
    np.testing.assert_allclose(x_norm, (x_test - mean) / std, atol=1e-3)


def test_image_folder_num_classes_and_class_names(tmp_path):
    write_images(tmp_path / "train", ["a", "b", "c"], per_class=4)
    write_images(tmp_path / "test", ["a", "b", "c"], per_class=2)
    loaded = data.load(
        "image_folder", directory=tmp_path, image_size=(4, 4), num_classes=3,
    )
    assert loaded.info.num_classes == 3
    with pytest.raises(ValueError, match="`num_classes=2` but .*train has 3 classes"):
        data.load("image_folder", directory=tmp_path, num_classes=2)
    with pytest.raises(ValueError, match=r"\['z'\] are not sub-folders"):
        data.load("image_folder", directory=tmp_path, class_names=["a", "z"])
    # A subset of the classes: two of them, so binary labels.
    pair = data.load(
        "image_folder", directory=tmp_path, image_size=(4, 4),
        class_names=["c", "a"], validation_split=0, scaling="none",
    )
    assert pair.info.label_format == "binary" and pair.info.num_train == 8
    x, y = collect(pair.test)
    np.testing.assert_array_equal(x[:, 1, 1, 0], np.where(y[:, 0] == 0, 120, 40))


# ---------------------------------------------------------------------------
# describe()


def no_data_access(monkeypatch, tmp_path):
    """Makes every way of reading data fail the test."""
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIRS", (str(empty),))

    def forbidden(*args, **kwargs):
        pytest.fail("describe() read data")

    for module in (keras.datasets.fashion_mnist, keras.datasets.cifar10,
                   keras.datasets.cifar100):
        monkeypatch.setattr(module, "load_data", forbidden)
    monkeypatch.setattr(keras.utils, "image_dataset_from_directory", forbidden)
    import sklearn.datasets

    monkeypatch.setattr(sklearn.datasets, "load_digits", forbidden)
    monkeypatch.setattr(image_folder, "_validate_images", forbidden)


def test_describe_without_files(tmp_path, monkeypatch):
    no_data_access(monkeypatch, tmp_path)
    fashion = data.describe("fashion_mnist", augment="mnist")
    assert isinstance(fashion, data.DatasetInfo)
    assert fashion.input_shape == (28, 28, 1) and fashion.num_classes == 10
    assert fashion.class_names == data.FASHION_MNIST_CLASS_NAMES
    assert fashion.label_format == "sparse" and fashion.output_units == 10
    assert fashion.augmented and fashion.scaling == "rescale"
    assert (fashion.num_train, fashion.num_validation, fashion.num_test) == (None,) * 3
    assert fashion.normalization_mean is None
    no_validation = data.describe(
        "fashion_mnist", validation_split=0, data_dir=tmp_path
    )
    assert no_validation.num_validation == 0 and no_validation.num_train is None
    cifar10 = data.describe("cifar10", scaling="normalize")
    assert cifar10.input_shape == (32, 32, 3) and cifar10.class_names[0] == "airplane"
    assert cifar10.scaling == "normalize" and not cifar10.augmented
    assert data.describe("cifar100").num_classes == 100
    coarse = data.describe("cifar100", label_mode="coarse")
    assert coarse.num_classes == 20 and coarse.class_names[19] == "19"
    digits = data.describe("digits", test_size=100)
    assert digits.input_shape == (8, 8, 1) and digits.num_test == 100

    missing = tmp_path / "not_here"
    skin = data.describe(
        "image_folder", directory=missing, image_size=(96, 96), num_classes=2,
        augment="skin_cancer",
    )
    assert skin.input_shape == (96, 96, 3) and skin.num_classes == 2
    assert skin.label_format == "binary" and skin.output_units == 1
    assert skin.class_names == () and skin.num_validation is None
    gray = data.describe(
        "image_folder", directory=missing, image_size=28, color_mode="grayscale",
        num_classes=2, label_mode="int",
    )
    assert gray.input_shape == (28, 28, 1) and gray.label_format == "sparse"
    named = data.describe(
        "image_folder", directory=missing, class_names=["x", "y", "z"],
        color_mode="rgba",
    )
    assert named.class_names == ("x", "y", "z") and named.num_classes == 3
    assert named.input_shape == (256, 256, 4) and named.label_format == "sparse"
    with pytest.raises(ValueError, match="not here.*num_classes="):
        data.describe("image_folder", directory=missing)


def test_describe_lists_existing_folder_without_reading_images(tmp_path, monkeypatch):
    root = tmp_path / "folder"
    write_images(root / "train", ["b", "a"], per_class=1)
    write_images(root / "test", ["b", "a"], per_class=1)
    no_data_access(monkeypatch, tmp_path)
    info = data.describe("image_folder", directory=root, image_size=(8, 8))
    assert info.class_names == ("a", "b") and info.label_format == "binary"
    assert info.num_validation is None
    assert data.describe(
        "image_folder", directory=root, validation_split=0
    ).num_validation == 0
    with pytest.raises(ValueError, match="`num_classes=3` but"):
        data.describe("image_folder", directory=root, num_classes=3)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(validation_split=0, test_split=0.3),
        dict(train_size=100, validation_size=20, test_size=50, seed=3),
        dict(train_size=5000, augment="mnist", scaling="normalize"),
    ],
)
def test_describe_agrees_with_load_on_digits(options):
    described = data.describe("digits", **options)
    loaded = data.load("digits", **options).info
    assert dataclasses.replace(
        loaded, normalization_mean=None, normalization_std=None
    ) == described


def test_describe_agrees_with_load_on_image_folders(tmp_path):
    write_images(tmp_path / "plain", ["cat", "dog", "fox"], per_class=4)
    write_images(tmp_path / "kaggle" / "train", ["benign", "malignant"], per_class=4)
    write_images(tmp_path / "kaggle" / "test", ["benign", "malignant"], per_class=2)
    cases = [
        dict(directory=tmp_path / "plain", image_size=(6, 5)),
        dict(directory=tmp_path / "plain", image_size=6, color_mode="grayscale",
             num_classes=3, augment="cifar"),
        dict(directory=tmp_path / "kaggle", image_size=(6, 5), scaling="none"),
        dict(directory=tmp_path / "kaggle", image_size=(6, 5), label_mode="int"),
    ]
    for options in cases:
        loaded = data.load("image_folder", **options)
        x, y = next(iter(loaded.train))
        described = data.describe("image_folder", **options)
        assert described.input_shape == tuple(x.shape[1:])
        assert described.label_format == ("binary" if y.ndim == 2 else "sparse")
        assert described.num_classes == len(described.class_names)
        for field in ("input_shape", "num_classes", "class_names",
                      "label_format", "augmented", "scaling"):
            assert getattr(described, field) == getattr(loaded.info, field), field
        # Where the folder is not here, num_classes gives the same answer.
        elsewhere = dict(options, directory=tmp_path / "elsewhere",
                         num_classes=loaded.info.num_classes)
        away = data.describe("image_folder", **elsewhere)
        for field in ("input_shape", "num_classes", "label_format", "output_units"):
            assert getattr(away, field) == getattr(loaded.info, field), field


BAD_OPTIONS = [
    ("mnist", {}, ValueError),
    ("digits", dict(batch_size=0), ValueError),
    ("digits", dict(validation_split=1.0), ValueError),
    ("digits", dict(scaling="standardize"), ValueError),
    ("digits", dict(train_size=-5), ValueError),
    ("digits", dict(seed="0"), ValueError),
    ("digits", dict(test_split=0), ValueError),
    ("digits", dict(augment="imagenet"), ValueError),
    ("digits", dict(augment=3), ValueError),
    ("digits", dict(color_mode="rgb"), TypeError),
    ("fashion_mnist", dict(data_dir=3), ValueError),
    ("fashion_mnist", dict(label_mode="fine"), TypeError),
    ("cifar10", dict(test_size=0), ValueError),
    ("cifar100", dict(label_mode="medium"), ValueError),
    ("image_folder", dict(), ValueError),
    ("image_folder", dict(image_size=(0, 5)), ValueError),
    ("image_folder", dict(image_size=(5, 5, 3)), ValueError),
    ("image_folder", dict(color_mode="cmyk"), ValueError),
    ("image_folder", dict(label_mode="categorical"), ValueError),
    ("image_folder", dict(interpolation="cubic"), ValueError),
    ("image_folder", dict(crop_to_aspect_ratio=1, pad_to_aspect_ratio=1), ValueError),
    ("image_folder", dict(num_classes=1), ValueError),
    ("image_folder", dict(class_names=["only"]), ValueError),
    ("image_folder", dict(class_names=["a", "b"], num_classes=3), ValueError),
    ("image_folder", dict(num_classes=3, label_mode="binary"), ValueError),
    ("image_folder", dict(test_split=1.5), ValueError),
    ("image_folder", dict(cache=3), ValueError),
    ("image_folder", dict(test_split=0.2, batch_size=-1), ValueError),
    ("image_folder", dict(data_dir="x"), TypeError),
]


@pytest.mark.parametrize("name, options, error", BAD_OPTIONS)
def test_describe_rejects_what_load_rejects(tmp_path, name, options, error):
    if name == "image_folder" and options:
        options = dict(directory=tmp_path / "not_here", **options)
    with pytest.raises(error) as from_load:
        data.load(name, **options)
    with pytest.raises(error) as from_describe:
        data.describe(name, **options)
    assert str(from_describe.value) == str(from_load.value)
    assert not isinstance(from_load.value, data.DatasetNotFoundError)


# ---------------------------------------------------------------------------
# Options


def test_unknown_names_and_bad_options():
    assert data.available() == [
        "cifar10", "cifar100", "digits", "fashion_mnist", "image_folder",
    ]
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*fashion_mnist"):
        data.load("mnist")
    with pytest.raises(ValueError, match="batch_size.*batch_size=0"):
        data.load("digits", batch_size=0)
    with pytest.raises(ValueError, match="validation_split"):
        data.load("digits", validation_split=1.0)
    with pytest.raises(ValueError, match="scaling"):
        data.load("digits", scaling="standardize")
    with pytest.raises(ValueError, match="train_size"):
        data.load("digits", train_size=-5)
    with pytest.raises(TypeError, match="'digits' got unknown option.*color_mode"):
        data.load("digits", color_mode="rgb")


def test_loaded_data_is_frozen():
    loaded = data.load("digits", train_size=50, test_size=20, validation_size=10)
    with pytest.raises(Exception):
        loaded.train = None
    with pytest.raises(Exception):
        loaded.info.num_train = 3
    assert (loaded.info.num_train, loaded.info.num_validation, loaded.info.num_test) == (50, 10, 20)
    x, y = next(iter(loaded.train))
    assert tuple(x.shape) == (32, 8, 8, 1) and tuple(y.shape) == (32,)


@pytest.mark.skipif(
    not all(
        __import__("os").path.exists(f"{fashion_mnist.FASHION_MNIST_DIRS[0]}/{stem}.gz")
        for stem in fashion_mnist.FASHION_MNIST_FILES.values()
    ),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian_package():
    loaded = data.load("fashion_mnist", test_size=64, train_size=64, augment="mnist")
    info = loaded.info
    assert info.num_test == 64 and info.num_train == 64
    assert info.num_validation == 6000  # 10% of the 60,000 training images
    x, y = next(iter(loaded.test))
    assert tuple(x.shape) == (32, 28, 28, 1) and 0 <= x.numpy().min() < x.numpy().max() <= 1
    assert set(y.numpy()) <= set(range(10))
