"""Exact logits of probability heads (`kdtrain.outputs.logits_model`)."""

import keras
import numpy as np
import pytest

import kdtrain
from kdtrain import losses
from kdtrain.cache import TeacherOutputCache
from kdtrain.cache import weights_fingerprint
from kdtrain.outputs import detect_output_kind
from kdtrain.outputs import logits_model
from kdtrain.outputs import to_logits

LARGEST_LOGIT = 50.0
TEMPERATURES = (1.0, 4.0, 20.0)


def np_log_distribution(z, t):
    """Log-probabilities of `z / t` in float64: softmax, or a single unit's
    two-class `(sigmoid, 1 - sigmoid)`."""
    z = np.asarray(z, np.float64) / t
    if z.shape[-1] == 1:
        return np.concatenate([-np.logaddexp(0, -z), -np.logaddexp(0, z)], -1)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(teacher_z, student_z, t):
    """`T² KL(teacher || student)` per sample."""
    log_p = np_log_distribution(teacher_z, t)
    log_q = np_log_distribution(student_z, t)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1) * t * t


def body(inputs):
    return keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)


def probability_heads(classes, activation):
    """One network as a logits model and as probability heads of every form
    `logits_model` reads, all with the same weights; and its inputs.

    The last layer is scaled so that its logits reach ±LARGEST_LOGIT.
    """
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32")
    reference = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(classes),
    ])
    z = reference.predict(x, verbose=0)
    kernel, bias = reference.layers[-1].get_weights()
    scale = LARGEST_LOGIT / np.abs(z).max()
    reference.layers[-1].set_weights([kernel * scale, bias * scale])

    inputs = keras.Input((6,))
    pre = keras.layers.Dense(classes)(body(inputs))
    heads = {
        "dense": keras.Sequential([
            keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(classes, activation=activation),
        ]),
        "activation": keras.Model(
            inputs, keras.layers.Activation(activation)(pre)
        ),
    }
    if activation == "softmax":
        inputs = keras.Input((6,))
        pre = keras.layers.Dense(classes)(body(inputs))
        heads["softmax_layer"] = keras.Model(
            inputs, keras.layers.Softmax()(pre)
        )
    for model in heads.values():
        model.set_weights(reference.get_weights())
    inner = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(classes, activation=activation),
    ])
    inner.set_weights(reference.get_weights())
    heads["nested"] = keras.Sequential([keras.Input((6,)), inner])
    return reference, heads, x


def np_logits(reference, x):
    """The reference's logits, from its weights in float64."""
    w1, b1, w2, b2 = (np.float64(w) for w in reference.get_weights())
    return np.tanh(x @ w1 + b1) @ w2 + b2


CASES = [("softmax", 5), ("sigmoid", 1)]


@pytest.mark.parametrize("activation,classes", CASES)
def test_logits_model_reads_the_exact_pre_activation(activation, classes):
    reference, heads, x = probability_heads(classes, activation)
    z = np_logits(reference, x)
    assert np.abs(z).max() == pytest.approx(LARGEST_LOGIT, rel=1e-5)
    for name, model in heads.items():
        assert detect_output_kind(model) == "probabilities", name
        before = weights_fingerprint(model)
        exact = logits_model(model)
        assert exact is logits_model(model), name  # built once
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(exact(x)), z, rtol=1e-5, atol=1e-5,
            err_msg=name,
        )
        # The teacher itself is unchanged: same weights, no new ones.
        assert weights_fingerprint(model) == before, name
        assert len(model.weights) == len(reference.weights), name
    # The inversion of probabilities loses the large logits (checked so that
    # the comparisons above cover that range).
    p = heads["dense"].predict(x, verbose=0)
    clipped = keras.ops.convert_to_numpy(to_logits(p, "probabilities"))
    if classes == 1:
        assert clipped.max() == pytest.approx(np.log(2.0**23 - 1), rel=1e-4)
        assert z.max() > 30.0
    else:
        assert clipped.min() == pytest.approx(
            np.log(np.finfo(np.float32).tiny), rel=1e-4
        )


@pytest.mark.parametrize("activation,classes", CASES)
def test_probability_heads_give_the_losses_of_their_logits_model(
    activation, classes
):
    reference, heads, x = probability_heads(classes, activation)
    z = np_logits(reference, x)
    keras.utils.set_random_seed(1)
    student = keras.Sequential([keras.Input((6,)),
                                keras.layers.Dense(classes)])
    s = student.predict(x, verbose=0)
    for temperature in TEMPERATURES:
        expected = np_kl(z, s, temperature).mean()
        for name, teacher in {"logits": reference, **heads}.items():
            distiller = kdtrain.Distiller(student, teacher)
            distiller.compile(
                optimizer="sgd",
                distillation_loss=losses.KLDivergence(temperature),
            )
            loss = distiller.compute_distillation_loss(
                None, distiller.teacher_logits(x), s
            )
            np.testing.assert_allclose(
                float(loss), expected, rtol=1e-5,
                err_msg=f"{name} at T={temperature}",
            )
    # Through fit, in a compiled train step, with a frozen student.
    distiller = kdtrain.Distiller(student, heads["dense"])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0),
                      distillation_loss=losses.KLDivergence(20.0),
                      metrics=None)
    history = distiller.fit(x, epochs=1, batch_size=len(x), verbose=0)
    np.testing.assert_allclose(history.history["distillation_loss"][0],
                               np_kl(z, s, 20.0).mean(), rtol=1e-5)


def test_feature_losses_take_the_exact_logits_in_the_same_pass():
    reference, heads, x = probability_heads(1, "sigmoid")
    z = np_logits(reference, x)
    teacher = heads["activation"]
    inputs = keras.Input((6,))
    student = keras.Model(inputs, keras.layers.Dense(1)(body(inputs)))
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(optimizer="sgd",
                      feature_losses=[losses.HintLoss("hidden")])
    logits, features = distiller.teacher_targets(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), z,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features[0]),
        np.tanh(x @ np.float64(reference.layers[0].kernel.numpy())
                + reference.layers[0].bias.numpy()),
        rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("activation,classes", CASES)
def test_the_cache_stores_the_exact_logits(activation, classes, tmp_path):
    reference, heads, x = probability_heads(classes, activation)
    z = np_logits(reference, x)
    if classes > 1:
        z = z - z.max(-1, keepdims=True)
    from_logits = TeacherOutputCache.compute(reference, x)
    for name, teacher in heads.items():
        cache = TeacherOutputCache.compute(teacher, x)
        np.testing.assert_array_equal(cache.logits, from_logits.logits,
                                      err_msg=name)
        cache.verify(teacher, x)
    np.testing.assert_allclose(from_logits.logits.astype("float64"), z,
                               rtol=2.0**-11, atol=1e-4)
    # Saving the teacher after its logits model was built: same weights.
    teacher = heads["dense"]
    teacher.save(tmp_path / "teacher.keras")
    loaded = keras.saving.load_model(tmp_path / "teacher.keras")
    assert weights_fingerprint(loaded) == weights_fingerprint(teacher)
    assert len(loaded.weights) == len(teacher.weights)
    TeacherOutputCache.compute(teacher, x).check(loaded)


def test_unreadable_heads_fall_back_to_the_stated_bounds():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, activation="sigmoid")

        def call(self, inputs):
            return self.dense(inputs)

    teacher = Subclassed()
    x = np.array([[-100.0], [-10.0], [0.0], [10.0], [100.0]], "float32")
    teacher(x)
    teacher.dense.set_weights([np.ones((1, 1)), np.zeros(1)])
    assert logits_model(teacher) is None
    distiller = kdtrain.Distiller(
        keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]), teacher,
        teacher_outputs="probabilities",
    )
    logits = keras.ops.convert_to_numpy(distiller.teacher_logits(x))[:, 0]
    low, high = np.log(np.finfo(np.float32).tiny), np.log(2.0**23 - 1)
    np.testing.assert_allclose(logits, [low, -10.0, 0.0, 10.0, high],
                               rtol=1e-3, atol=1e-4)
    # Nor is another kind of layer with a softmax activation.
    inputs = keras.Input((3,))
    dense = keras.layers.EinsumDense("ab,bc->ac", output_shape=2,
                                     activation="softmax")
    assert logits_model(keras.Model(inputs, dense(inputs))) is None


STUDENT_TEMPERATURE = 4.0
GROUND_TRUTH_WEIGHT = 0.5
LEARNING_RATE = 0.5


def np_sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def np_student_step(weights, x, y, t, hint=None):
    """One SGD step of a `tanh hidden -> logits` student in float64 NumPy.

    The loss is `(1 - w) * T² KL(teacher || student) + w * crossentropy`,
    with the softmax or sigmoid applied here, to the logits; `hint` adds
    FitNets' `mean((h A + c - teacher_features)²)` with the adapter `(A, c)`.

    Returns:
        `(loss, the student's new weights, the adapter's new weights or
        None, the student's logits)`.
    """
    w1, b1, w2, b2 = (np.float64(v) for v in weights)
    n = len(x)
    h = np.tanh(x @ w1 + b1)
    z = h @ w2 + b2
    temperature, w = STUDENT_TEMPERATURE, GROUND_TRUTH_WEIGHT
    if z.shape[-1] == 1:
        target = y.reshape(-1, 1).astype(np.float64)
        q, p, probabilities = (np_sigmoid(z / temperature),
                               np_sigmoid(t / temperature), np_sigmoid(z))
        log_d = np_log_distribution(z, 1.0)
        crossentropy = -(target[:, 0] * log_d[:, 0]
                         + (1 - target[:, 0]) * log_d[:, 1])
    else:
        target = np.eye(z.shape[-1])[y]
        q, p, probabilities = (
            np.exp(np_log_distribution(v, s))
            for v, s in ((z, temperature), (t, temperature), (z, 1.0))
        )
        crossentropy = -np_log_distribution(z, 1.0)[np.arange(n), y]
    loss = ((1 - w) * np_kl(t, z, temperature).mean()
            + w * crossentropy.mean())
    # d loss / d z: T (q - p) for T² KL, probabilities - target for the
    # crossentropy, each averaged over the batch.
    g = ((1 - w) * temperature * (q - p) + w * (probabilities - target)) / n
    dh = g @ w2.T
    adapter = None
    if hint is not None:
        a, c, teacher_features = (np.float64(v) for v in hint)
        d = h @ a + c - teacher_features
        loss += np.mean(d**2)
        gd = 2 * d / d.size
        dh = dh + gd @ a.T
        adapter = [a - LEARNING_RATE * h.T @ gd,
                   c - LEARNING_RATE * gd.sum(0)]
    da = dh * (1 - h**2)
    grads = [x.T @ da, da.sum(0), h.T @ g, g.sum(0)]
    new = [v - LEARNING_RATE * grad
           for v, grad in zip((w1, b1, w2, b2), grads)]
    return loss, new, adapter, z


def student_distiller(student, teacher, feature_losses=()):
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        distillation_loss=losses.KLDivergence(STUDENT_TEMPERATURE),
        ground_truth_weight=GROUND_TRUTH_WEIGHT,
        feature_losses=feature_losses,
    )
    return distiller


def np_accuracy(z, y):
    return np.mean((z[:, 0] > 0) == y if z.shape[-1] == 1
                   else z.argmax(-1) == y)


@pytest.mark.parametrize("activation,classes", CASES)
def test_saturated_probability_students_train_on_their_exact_logits(
    activation, classes, monkeypatch
):
    """One step of every form of probability head: the losses, metrics and
    gradients of its logits (up to ±50), as a NumPy reference gets them
    from a logits head with the activation applied in the loss."""
    reference, heads, x = probability_heads(classes, activation)
    y = np.random.default_rng(3).integers(0, max(classes, 2), len(x))
    keras.utils.set_random_seed(2)
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.RandomNormal(
            stddev=2.0))])
    wt, bt = (np.float64(v) for v in teacher.get_weights())
    t = x @ wt + bt
    start = reference.get_weights()
    loss, expected, _, z = np_student_step(start, x, y, t)
    assert np.abs(z).max() > 45.0  # far beyond what to_logits inverts
    crossentropy = -np.mean(
        np_log_distribution(z, 1.0)[np.arange(len(x)), 1 - y]
        if classes == 1 else np_log_distribution(z, 1.0)[np.arange(len(x)), y]
    )
    for name, student in heads.items():
        distiller = student_distiller(student, teacher)
        evaluation = distiller.evaluate(x, y, batch_size=len(x), verbose=0,
                                        return_dict=True)
        np.testing.assert_allclose(evaluation["loss"], crossentropy,
                                   rtol=1e-5, err_msg=name)
        history = distiller.fit(x, y, batch_size=len(x), epochs=1,
                                shuffle=False, verbose=0).history
        np.testing.assert_allclose(history["loss"][0], loss, rtol=1e-5,
                                   err_msg=name)
        assert history["accuracy"][0] == pytest.approx(np_accuracy(z, y))
        for value, want in zip(student.get_weights(), expected):
            np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6,
                                       err_msg=name)
    # The step moved the weights far beyond that tolerance (the output
    # kernel's by over 1%), and inverting the probabilities (`to_logits`)
    # would have given another step.
    assert np.abs(expected[2] - start[2]).max() > 1e-2 * np.abs(start[2]).max()
    from kdtrain import distiller as distiller_module

    monkeypatch.setattr(distiller_module, "logits_model", lambda model: None)
    student = heads["dense"]
    student.set_weights(start)
    student_distiller(student, teacher).fit(
        x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0
    )
    assert not all(np.allclose(value, want, rtol=1e-3)
                   for value, want in zip(student.get_weights(), expected))


@pytest.mark.parametrize("activation,classes", CASES)
def test_a_saturated_student_with_feature_losses_takes_its_exact_logits(
    activation, classes
):
    """The feature extractor's pass gives the exact logits and the
    features: one step against the NumPy reference, hint included."""
    reference, heads, x = probability_heads(classes, activation)
    student = heads["activation"]  # its hidden layer is named "hidden"
    y = np.random.default_rng(4).integers(0, max(classes, 2), len(x))
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,))
    teacher = keras.Model(inputs, keras.layers.Dense(classes)(body(inputs)))
    wt1, bt1, wt2, bt2 = (np.float64(v) for v in teacher.get_weights())
    teacher_features = np.tanh(x @ wt1 + bt1)
    t = teacher_features @ wt2 + bt2
    distiller = student_distiller(student, teacher,
                                  [losses.HintLoss("hidden")])
    adapter = distiller.hint_adapters[0]
    loss, expected, expected_adapter, _ = np_student_step(
        reference.get_weights(), x, y, t,
        hint=(*adapter.get_weights(), teacher_features),
    )
    history = distiller.fit(x, y, batch_size=len(x), epochs=1,
                            shuffle=False, verbose=0).history
    np.testing.assert_allclose(history["loss"][0], loss, rtol=1e-5)
    for value, want in zip(student.get_weights() + adapter.get_weights(),
                           expected + expected_adapter):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
