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


def raw_logits(teacher, x):
    """The softmax teacher's logits from its weights in numpy."""
    w1, b1, w2, b2 = teacher.get_weights()
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def reference_logits(teacher, x):
    """`raw_logits`, each row minus its maximum (as the cache stores them)."""
    z = raw_logits(teacher, x)
    return z - z.max(-1, keepdims=True)


def assert_cached_logits(delivered, z):
    """Batches' logits against the teacher's `z`: float16 rounds each logit
    within `2**-11` of its distance from its row's maximum (the centered
    value it stores); float32 sums and passes err by far less."""
    z = np.asarray(z, np.float64)
    error = np.abs(np.asarray(delivered, np.float64) - z)
    bound = 2.0**-11 * np.abs(z - z.max(-1, keepdims=True)) + 1e-5
    assert np.all(error <= bound), (error - bound).max()


def np_softmax(z, t=1.0):
    return np.exp(log_softmax(np.asarray(z, np.float64) / t))


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
    # Each row's maximum is kept beside it, in float32.
    raw = raw_logits(trained_teacher, digits[0])
    assert cache.offsets.dtype == np.float32
    assert cache.offsets.shape == (len(digits[0]),)
    np.testing.assert_allclose(cache.offsets, raw.max(-1), rtol=1e-5,
                               atol=1e-5)
    assert np.abs(cache.offsets).max() > 1.0  # the test covers offsets
    assert cache.fingerprint == cache_module.weights_fingerprint(
        trained_teacher
    )


def test_cifar100_sized_cache_takes_ten_megabytes():
    assert TeacherOutputCache(np.zeros((50000, 100)), "x").nbytes == 10**7


def test_shuffled_batches_carry_their_own_samples_logits(
    cache, trained_teacher, digits
):
    x, y = digits
    expected = raw_logits(trained_teacher, x)
    dataset = cache.dataset(x, y, batch_size=100, shuffle=True, seed=3)
    orders = []
    for _ in range(2):
        seen = []
        for inputs, labels in dataset:
            batch_x = inputs["inputs"].numpy()
            rows = [int(np.argmin(np.abs(x - row).sum(1))) for row in batch_x[:8]]
            np.testing.assert_array_equal(labels.numpy()[:8], y[rows])
            # The teacher's own logits: centered rows plus their offsets.
            assert inputs["teacher_logits"].dtype == tf.float32
            assert_cached_logits(inputs["teacher_logits"].numpy()[:8],
                                 raw_logits(trained_teacher, batch_x[:8]))
            assert_cached_logits(inputs["teacher_logits"].numpy()[:8],
                                 expected[rows])
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
        verbose=0, shuffle=False,
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
        "teacher_offsets.npy", "teacher_outputs.json", "teacher_outputs.npy"
    ]
    loaded = TeacherOutputCache.load(
        tmp_path, teacher=trained_teacher, samples=len(digits[0]),
        memory_map=True,
    )
    assert isinstance(loaded.logits, np.memmap)
    np.testing.assert_array_equal(loaded.logits, cache.logits)
    np.testing.assert_array_equal(loaded.offsets, cache.offsets)
    x, y = digits
    inputs, _ = next(iter(loaded.dataset(x, y, batch_size=50, shuffle=False)))
    np.testing.assert_array_equal(
        inputs["teacher_logits"].numpy(),
        cache.logits[:50].astype("float32") + cache.offsets[:50, None],
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
    keyed = TeacherOutputCache(cache.logits, cache.fingerprint, keys,
                               cache.offsets)
    keyed.save(tmp_path / "cache")
    same = TeacherOutputCache.load(tmp_path / "cache", keys=keys)
    np.testing.assert_array_equal(same.offsets, cache.offsets)
    # The same samples in another order: each row follows its sample, and
    # its offset with it.
    order = np.random.default_rng(1).permutation(len(x))
    reordered = TeacherOutputCache.load(tmp_path / "cache", keys=keys[order])
    np.testing.assert_array_equal(reordered.logits, cache.logits[order])
    np.testing.assert_array_equal(reordered.offsets, cache.offsets[order])
    np.testing.assert_array_equal(reordered.keys, keys[order])
    inputs, = next(iter(reordered.dataset(x[order], batch_size=64,
                                          shuffle=False)))
    assert_cached_logits(inputs["teacher_logits"].numpy(),
                         raw_logits(trained_teacher, x[order][:64]))
    reordered.verify(trained_teacher, x[order])
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
    for logits, offsets in (
        (cache.logits[order], cache.offsets[order]),  # permuted rows
        (cache.logits, cache.offsets[order]),  # permuted offsets
        (cache.logits, None),  # offsets lost: other logits
    ):
        wrong = TeacherOutputCache(logits, cache.fingerprint, offsets=offsets)
        with pytest.raises(cache_module.CacheMismatch,
                           match="does not hold this teacher's outputs"):
            wrong.verify(trained_teacher, x)


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


def offset_teacher(classes, offset):
    """A logits teacher whose rows spread over about ±8 around `offset`."""
    keras.utils.set_random_seed(21)
    teacher = keras.Sequential([keras.Input((6,)),
                                keras.layers.Dense(classes)])
    kernel = np.random.default_rng(4).standard_normal((6, classes)) * 2.0
    teacher.set_weights([kernel, np.full(classes, offset)])
    return teacher


@pytest.mark.parametrize("classes", [10, 100])
def test_offset_logits_keep_their_soft_targets(classes):
    x = np.random.default_rng(5).standard_normal((256, 6)).astype("float32")
    teacher = offset_teacher(classes, 300.0)
    w, b = (np.float64(v) for v in teacher.get_weights())
    z = x @ w + b  # float64 reference
    cache = TeacherOutputCache.compute(teacher, x, teacher_outputs="logits")
    stored = cache.logits.astype("float32")
    np.testing.assert_array_equal(stored.max(-1), 0.0)  # row-centered
    for t in (1.0, 4.0, 20.0):
        error = np.abs(np_softmax(stored, t) - np_softmax(z, t)).max()
        assert error < 1e-3, (t, error)
        # The stated bound, first order: 2**-11 * (1/e + ln(classes)).
        assert error < 2.0**-11 * (1 / np.e + np.log(classes))
    # Uncentered float16 would not have kept them.
    assert np.abs(np_softmax(z.astype("float16")) - np_softmax(z)).max() > 1e-2
    # Batches carry the teacher's logits, offsets added back: within float16
    # rounding of the centered part plus float32's of the sum (and of the
    # teacher's own float32 pass).
    np.testing.assert_allclose(cache.offsets, z.max(-1), rtol=2.0**-22)
    inputs, = next(iter(cache.dataset(x, batch_size=32, shuffle=False)))
    delivered = inputs["teacher_logits"].numpy()
    assert delivered.dtype == np.float32
    bound = (2.0**-11 * np.abs(z[:32] - z[:32].max(-1, keepdims=True))
             + 2 * np.spacing(np.abs(z[:32]).astype("float32")))
    assert np.all(np.abs(delivered - z[:32]) <= bound)
    for t in (1.0, 4.0, 20.0):
        assert np.abs(np_softmax(delivered, t)
                      - np_softmax(z[:32], t)).max() < 1e-3, t
    cache.verify(teacher, x, teacher_outputs="logits")


def test_a_single_unit_is_stored_as_it_is():
    x = np.random.default_rng(6).standard_normal((64, 6)).astype("float32")
    teacher = offset_teacher(1, 3.0)
    w, b = (np.float64(v) for v in teacher.get_weights())
    z = x @ w + b
    cache = TeacherOutputCache.compute(teacher, x)
    # Not centered: a sigmoid's logit is not shift-invariant.
    np.testing.assert_allclose(cache.logits.astype("float64"), z,
                               rtol=2.0**-11, atol=1e-6)
    for t in (1.0, 4.0):
        sigmoid = 1 / (1 + np.exp(-cache.logits.astype("float64") / t))
        assert np.abs(sigmoid - 1 / (1 + np.exp(-z / t))).max() <= (
            2.0**-11 / np.e
        )


def test_verify_compares_the_logits_with_their_offsets(cache,
                                                       trained_teacher,
                                                       digits):
    x, _ = digits
    raw = raw_logits(trained_teacher, x).astype("float32")
    # Uncentered float16 rows (offsets 0) are the teacher's logits: fine.
    TeacherOutputCache(raw.astype("float16"), cache.fingerprint).verify(
        trained_teacher, x
    )
    # Shifted rows have the teacher's softmax but not its logits.
    shift = np.linspace(-20, 20, len(x), dtype="float32")
    shifted = TeacherOutputCache(cache.logits, cache.fingerprint,
                                 offsets=cache.offsets + shift)
    with pytest.raises(cache_module.CacheMismatch,
                       match="does not hold this teacher's outputs"):
        shifted.verify(trained_teacher, x)
    # Other arrays given to the constructor are split into centered rows
    # and offsets.
    split = TeacherOutputCache(raw, cache.fingerprint)
    np.testing.assert_array_equal(split.logits.max(-1), 0.0)
    np.testing.assert_array_equal(split.offsets, raw.max(-1))
    split.verify(trained_teacher, x)
    with pytest.raises(ValueError, match="`offsets` go with float16"):
        TeacherOutputCache(raw, cache.fingerprint, offsets=raw.max(-1))
    with pytest.raises(ValueError, match="one per row"):
        TeacherOutputCache(cache.logits, cache.fingerprint,
                           offsets=cache.offsets[:5])


def strip_offsets(directory):
    """Makes a saved cache look like one saved without its rows' offsets."""
    from kdtrain import files

    info = files.read_json(directory / "teacher_outputs.json")
    del info["files"]["offsets"], info["sha256"]["teacher_offsets.npy"]
    (directory / "teacher_offsets.npy").unlink()
    files.write_json_atomically(directory / "teacher_outputs.json", info)


def test_a_cache_saved_without_offsets_is_refused(cache, tmp_path):
    """Its rows may be centered with their offsets lost, or uncentered
    float16; the files cannot tell, so it is computed again."""
    cache.save(tmp_path)
    strip_offsets(tmp_path)
    with pytest.raises(cache_module.CacheMismatch,
                       match="no offsets of its rows.*Compute it again"):
        TeacherOutputCache.load(tmp_path)


def test_cached_logits_mse_trains_on_the_online_targets():
    """`LogitsMSE(center=False)` sees a row's offset: a cached step must see
    the teacher's logits (about 300 ± 8 here), not the centered rows."""
    x = np.random.default_rng(7).standard_normal((128, 6)).astype("float32")
    teacher = offset_teacher(10, 300.0)
    w, b = (np.float64(v) for v in teacher.get_weights())
    z = x @ w + b  # float64 reference
    cache = TeacherOutputCache.compute(teacher, x, teacher_outputs="logits")
    learning_rate = 1e-3

    def step(data, **kwargs):
        keras.utils.set_random_seed(3)
        student = keras.Sequential([keras.Input((6,)),
                                    keras.layers.Dense(10)])
        before = [np.float64(v) for v in student.get_weights()]
        distiller = kdtrain.Distiller(student, teacher)
        distiller.compile(
            optimizer=keras.optimizers.SGD(learning_rate),
            distillation_loss=kdtrain.losses.LogitsMSE(center=False),
            metrics=None,
        )
        history = distiller.fit(data, epochs=1, verbose=0, **kwargs)
        after = student.get_weights()
        return before, history.history["loss"][0], after

    before, online_loss, online = step(x, batch_size=128, shuffle=False)
    _, cached_loss, cached = step(cache.dataset(x, batch_size=128,
                                                shuffle=False), shuffle=False)
    # NumPy reference: mean((s - z)^2) and one SGD step of it.
    kernel, bias = before
    s = x @ kernel + bias
    expected_loss = np.mean((s - z) ** 2)
    grad = 2 * (s - z) / z.size
    expected = [kernel - learning_rate * x.T @ grad,
                bias - learning_rate * grad.sum(0)]
    np.testing.assert_allclose(online_loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(cached_loss, expected_loss, rtol=1e-3)
    assert expected_loss > 5e4  # the offsets dominate the loss
    for name, weights in (("online", online), ("cached", cached)):
        for value, start, reference in zip(weights, before, expected):
            np.testing.assert_allclose(value - start, reference - start,
                                       rtol=1e-3, err_msg=name)


def test_refuses_logits_beyond_float16():
    def teacher(kernel):
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(
            len(kernel[0]), kernel_initializer=keras.initializers.Constant(
                kernel))])

    x = np.full((4, 2), 1e5, "float32")
    # A large offset is centered away...
    equal = TeacherOutputCache.compute(teacher([[1.0, 1.0], [1.0, 1.0]]), x,
                                       teacher_outputs="logits")
    np.testing.assert_array_equal(equal.logits, 0.0)
    np.testing.assert_array_equal(equal.offsets, 2e5)  # kept in float32
    # ...a spread beyond float16 (or a single unit beyond it) is not.
    for kernel in ([[1.0, -1.0], [1.0, -1.0]], [[1.0], [1.0]]):
        with pytest.raises(ValueError, match="float16"):
            TeacherOutputCache.compute(teacher(kernel), x,
                                       teacher_outputs="logits")


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
    np.testing.assert_array_equal(again.offsets, saved.offsets)
    # A cache saved without offsets: refused, computed again with them.
    strip_offsets(cache_dir)
    with pytest.warns(UserWarning, match="no offsets.*Computing it again"):
        with pytest.raises(RuntimeError, match="crash"):
            _runner(trained_teacher, directory=tmp_path).run(
                (x, y), epochs=1, batch_size=256, callbacks=[_Crash()]
            )
    again = TeacherOutputCache.load(cache_dir, teacher=trained_teacher)
    np.testing.assert_array_equal(again.offsets, saved.offsets)
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
