"""Tests of kdtrain.cache and the runner's cache_teacher."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import mlp

import kdtrain
from kdtrain import cache as cache_module
from kdtrain.cache import TeacherOutputCache

TEMPERATURE = 3.0


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_logits(teacher, x):
    """The teacher's log-probabilities, from its softmax outputs in numpy."""
    probabilities = teacher.predict(x, batch_size=512, verbose=0)
    return np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))


def kl_loss(teacher_logits, student_logits, t=TEMPERATURE):
    """T^2 * KL(teacher || student) at temperature t, per sample."""
    log_t = log_softmax(teacher_logits / t)
    log_s = log_softmax(student_logits / t)
    return (np.exp(log_t) * (log_t - log_s)).sum(-1) * t * t


@pytest.fixture(scope="module")
def cache(trained_teacher, digits):
    return TeacherOutputCache.compute(trained_teacher, digits[0])


def test_cache_holds_the_teachers_logits_as_float16(
    cache, trained_teacher, digits
):
    expected = reference_logits(trained_teacher, digits[0])
    assert cache.logits.dtype == np.float16
    assert cache.num_samples == len(digits[0])
    np.testing.assert_allclose(
        cache.logits.astype("float32"), expected, rtol=1e-3, atol=1e-3
    )
    assert cache.fingerprint == cache_module.weights_fingerprint(
        trained_teacher
    )


def test_cifar100_sized_cache_takes_ten_megabytes():
    assert TeacherOutputCache(np.zeros((50000, 100)), "x").nbytes == 10**7


def test_shuffled_batches_carry_their_own_samples_logits(
    cache, trained_teacher, digits
):
    x, y = digits
    expected = reference_logits(trained_teacher, x)
    dataset = cache.dataset(x, y, batch_size=100, shuffle=True, seed=3)
    orders = []
    for _ in range(2):
        seen = []
        for inputs, labels in dataset:
            batch_x = inputs["inputs"].numpy()
            rows = [int(np.argmin(np.abs(x - row).sum(1))) for row in batch_x[:8]]
            np.testing.assert_array_equal(labels.numpy()[:8], y[rows])
            np.testing.assert_allclose(
                inputs["teacher_logits"].numpy()[:8].astype("float32"),
                reference_logits(trained_teacher, batch_x[:8]),
                rtol=1e-3, atol=1e-3,
            )
            np.testing.assert_allclose(
                inputs["teacher_logits"].numpy()[:8].astype("float32"),
                expected[rows], rtol=1e-3, atol=1e-3,
            )
            seen.append(labels.numpy())
        orders.append(np.concatenate(seen))
    assert sorted(orders[0]) == sorted(y)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled


def _distiller(teacher, seed=7):
    student = mlp(24, seed=seed)
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05),
        distillation_loss=kdtrain.losses.KLDivergence(TEMPERATURE),
        ground_truth_weight=0.25,
        metrics=["accuracy"],
    )
    return distiller


def test_cached_losses_equal_online_losses(cache, trained_teacher, digits):
    x, y = digits
    online = _distiller(trained_teacher)
    cached = _distiller(trained_teacher)
    initial = online.student(x[:256]).numpy()
    # The first batch's distillation loss against a numpy reference.
    reference = kl_loss(reference_logits(trained_teacher, x[:256]), initial)
    loss = cached.compute_distillation_loss(
        y[:256], cache.logits[:256].astype("float32"), initial
    )
    expected = 0.75 * reference.mean() + 0.25 * np.mean(
        -log_softmax(initial)[np.arange(256), y[:256]]
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-3)

    h_online = online.fit(x, y, batch_size=128, epochs=2, shuffle=False,
                          verbose=0)
    h_cached = cached.fit(
        cache.dataset(x, y, batch_size=128, shuffle=False), epochs=2,
        verbose=0,
    )
    for key in ("loss", "distillation_loss", "ground_truth_loss", "accuracy"):
        np.testing.assert_allclose(
            h_cached.history[key], h_online.history[key], rtol=2e-3,
            atol=1e-3, err_msg=key,
        )
    for a, b in zip(cached.student.get_weights(), online.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


def test_save_and_load_memory_mapped(cache, trained_teacher, digits, tmp_path):
    cache.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "teacher_outputs.json", "teacher_outputs.npy"
    ]
    loaded = TeacherOutputCache.load(
        tmp_path, teacher=trained_teacher, samples=len(digits[0]),
        memory_map=True,
    )
    assert isinstance(loaded.logits, np.memmap)
    np.testing.assert_array_equal(loaded.logits, cache.logits)
    x, y = digits
    inputs, _ = next(iter(loaded.dataset(x, y, batch_size=50, shuffle=False)))
    np.testing.assert_array_equal(
        inputs["teacher_logits"].numpy(), cache.logits[:50]
    )


def test_refuses_another_teacher_and_other_data(cache, digits, tmp_path):
    x, y = digits
    cache.save(tmp_path)
    other = mlp(64, activation="softmax", seed=5)
    with pytest.raises(ValueError, match="another teacher"):
        TeacherOutputCache.load(tmp_path, teacher=other)
    with pytest.raises(ValueError, match=r"1797 samples, but the data has 100"):
        cache.dataset(x[:100], y[:100])
    with pytest.raises(ValueError, match="1797 samples, but the data has 5"):
        TeacherOutputCache.load(tmp_path, samples=5)
    # Refusing changed nothing on disk.
    assert json.loads((tmp_path / "teacher_outputs.json").read_text())[
        "fingerprint"
    ] == cache.fingerprint


def test_keys_name_each_rows_sample(cache, trained_teacher, digits, tmp_path):
    x, y = digits
    keys = cache_module.sample_keys(x, y)
    assert keys.dtype == np.dtype("S16") and len(set(keys)) == len(
        set(map(bytes, np.unique(np.concatenate([x, y[:, None]], 1), axis=0)))
    )
    keyed = TeacherOutputCache(cache.logits, cache.fingerprint, keys)
    keyed.save(tmp_path / "cache")
    TeacherOutputCache.load(tmp_path / "cache", keys=keys)
    # The same samples in another order: each row follows its sample.
    order = np.random.default_rng(1).permutation(len(x))
    reordered = TeacherOutputCache.load(tmp_path / "cache", keys=keys[order])
    np.testing.assert_array_equal(reordered.logits, cache.logits[order])
    np.testing.assert_array_equal(reordered.keys, keys[order])
    with pytest.raises(cache_module.CacheMismatch, match="another order"):
        keyed.check(keys=keys[order])
    # Other samples: refused.
    other = cache_module.sample_keys(x + 1.0, y)
    with pytest.raises(cache_module.CacheMismatch, match="other samples"):
        TeacherOutputCache.load(tmp_path / "cache", keys=other)


def test_verify_recomputes_rows_and_catches_permuted_ones(
    cache, trained_teacher, digits
):
    x, _ = digits
    cache.verify(trained_teacher, x)  # the teacher's own outputs: fine
    order = np.random.default_rng(2).permutation(len(x))
    permuted = TeacherOutputCache(cache.logits[order], cache.fingerprint)
    with pytest.raises(cache_module.CacheMismatch,
                       match="does not hold this teacher's outputs"):
        permuted.verify(trained_teacher, x)


def test_a_shuffled_pipeline_reads_the_same_in_every_state(digits):
    """A resumed process materializes a shuffled pipeline in another order;
    the training arrays (and so the cache rows) must not follow it."""
    from kdtrain.chain.splits import DataSplit

    x, y = digits
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=3
    ).batch(64)
    first = DataSplit(dataset, None, "train_data").training_arrays()
    list(dataset)  # the shuffle's state moves on, as in another process
    second = DataSplit(dataset, None, "train_data").training_arrays()
    np.testing.assert_array_equal(first.keys, second.keys)
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)
    assert sorted(first.keys.tolist()) == first.keys.tolist()
    rows = {bytes(k): (xi, yi) for k, xi, yi in zip(
        cache_module.sample_keys(x, y), x, y
    )}
    for key, xi, yi in zip(first.keys[:50], first.x[:50], first.y[:50]):
        np.testing.assert_array_equal(rows[bytes(key)][0], xi)
        assert rows[bytes(key)][1] == yi


def test_non_finite_teacher_outputs_name_the_batch():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(keras.ops.log(inputs))  # NaN below 0
    teacher = keras.Model(inputs, outputs)
    x = np.ones((40, 3), "float32")
    x[25, 1] = -1.0
    with pytest.raises(cache_module.NonFiniteTeacherOutputs,
                       match=r"NaN on batch 2 .*samples 20 to 29; first at "
                             r"sample 25"):
        TeacherOutputCache.compute(teacher, x, batch_size=10,
                                   teacher_outputs="logits", name="T")


def test_save_refuses_a_folder_of_other_files(cache, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files"):
        cache.save(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_refuses_logits_beyond_float16():
    teacher = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(2, kernel_initializer="ones")]
    )
    with pytest.raises(ValueError, match="float16"):
        TeacherOutputCache.compute(
            teacher, np.full((4, 2), 1e5, "float32"), teacher_outputs="logits"
        )


def test_augmentation_detection():
    x = np.zeros((8, 8, 8, 1), "float32")
    y = np.zeros(8, "int64")
    plain = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(8).batch(4)
    flip = keras.layers.RandomFlip("horizontal", seed=1)
    augmented = plain.map(lambda a, b: (flip(a, training=True), b))
    noisy = plain.map(lambda a, b: (a + tf.random.normal(tf.shape(a)), b))
    assert not cache_module.is_randomized(plain)
    assert cache_module.is_shuffled(plain)
    assert cache_module.is_randomized(augmented)
    assert cache_module.is_randomized(noisy)
    assert not cache_module.is_shuffled(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    )


def _runner(teacher, **kwargs):
    def build():
        return mlp(24, seed=11)

    return kdtrain.GenerationRunner(
        build, generations=1, teacher=teacher, seed=0, verbose=0,
        distillation_loss=kdtrain.losses.KLDivergence(TEMPERATURE),
        ground_truth_weight=0.25, optimizer={"class_name": "SGD", "config": {
            "learning_rate": 0.05}}, **kwargs,
    )


def test_runner_cached_chain_equals_online_chain(trained_teacher, digits,
                                                 tmp_path):
    x, y = digits
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    online = _runner(trained_teacher, cache_teacher=False).run(data, epochs=2)
    runner = _runner(trained_teacher, directory=tmp_path)
    cached = runner.run(data, epochs=2)
    assert runner.cache_used  # "auto" chose the cache
    for key, values in online.histories["gen-1"].history.items():
        np.testing.assert_allclose(
            cached.histories["gen-1"].history[key], values, rtol=2e-3,
            atol=1e-3, err_msg=key,
        )
    # The cache lives in gen-1/ only while the generation trains.
    assert not TeacherOutputCache.exists(tmp_path / "gen-1")
    assert (tmp_path / "gen-1" / "model.keras").exists()


class _Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        raise RuntimeError("crash")


def test_runner_resumes_with_its_cache_and_recomputes_a_stale_one(
    trained_teacher, digits, tmp_path
):
    x, y = digits
    cache_dir = tmp_path / "gen-1" / "cache"
    with pytest.raises(RuntimeError, match="crash"):
        _runner(trained_teacher, directory=tmp_path).run(
            (x, y), epochs=1, batch_size=256, callbacks=[_Crash()]
        )
    saved = TeacherOutputCache.load(cache_dir, teacher=trained_teacher)
    assert saved.keys is not None and len(saved.keys) == len(x)
    # Another teacher's outputs in its place: refused, computed again.
    TeacherOutputCache(np.zeros((len(x), 10)), "0" * 64, saved.keys).save(
        cache_dir
    )
    with pytest.warns(UserWarning, match="another teacher.*Computing it again"):
        with pytest.raises(RuntimeError, match="crash"):
            _runner(trained_teacher, directory=tmp_path).run(
                (x, y), epochs=1, batch_size=256, callbacks=[_Crash()]
            )
    again = TeacherOutputCache.load(cache_dir, teacher=trained_teacher)
    np.testing.assert_array_equal(again.logits, saved.logits)
    result = _runner(trained_teacher, directory=tmp_path).run(
        (x, y), epochs=1, batch_size=256
    )
    assert result.histories["gen-1"].history["loss"]
    assert not TeacherOutputCache.exists(cache_dir)


def test_runner_cache_choice(trained_teacher):
    x = np.zeros((16, 64), "float32")
    y = np.zeros(16, "int64")
    noisy = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(
        lambda a, b: (a + tf.random.uniform(tf.shape(a)), b)
    )
    with pytest.raises(ValueError, match="same augmented batch"):
        _runner(trained_teacher, cache_teacher=True).run(noisy)
    runner = _runner(trained_teacher)  # "auto": online on augmented data
    runner.run(noisy, evaluate=False)
    assert not runner.cache_used

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[:8], y[:8]

    with pytest.raises(ValueError, match="arrays or a tf.data.Dataset"):
        _runner(trained_teacher, cache_teacher=True).run(Batches())
    with pytest.raises(ValueError, match="'auto', True, False"):
        _runner(trained_teacher, cache_teacher="yes")
