import keras
import numpy as np
import pytest

import kdtrain
from kdtrain.ensemble import GenerationEnsemble


def dense(units=3, activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(units, activation=activation)]
    )


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(32, 4)).astype("float32")


def test_averages_probabilities_of_logit_and_softmax_models(x):
    logits, probabilities = dense(seed=1), dense(activation="softmax", seed=2)
    ensemble = GenerationEnsemble([logits, probabilities])
    assert ensemble.output_kinds == ["logits", "probabilities"]
    expected = (
        softmax(logits.predict(x, verbose=0))
        + probabilities.predict(x, verbose=0)
    ) / 2
    outputs = ensemble.predict(x, verbose=0)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(outputs.sum(-1), 1.0, rtol=1e-5)


def test_weights_are_normalized(x):
    a, b = dense(seed=1), dense(seed=2)
    ensemble = GenerationEnsemble([a, b], weights=[1, 3])
    expected = 0.25 * softmax(a.predict(x, verbose=0)) + 0.75 * softmax(
        b.predict(x, verbose=0)
    )
    np.testing.assert_allclose(
        ensemble.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-7
    )


def test_binary_members_average_sigmoids(x):
    a, b = dense(1, seed=1), dense(1, activation="sigmoid", seed=2)
    ensemble = GenerationEnsemble([a, b])
    expected = (sigmoid(a.predict(x, verbose=0)) + b.predict(x, verbose=0)) / 2
    np.testing.assert_allclose(
        ensemble.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-7
    )


def test_declared_output_kinds(x):
    a = dense(seed=1)
    as_probabilities = GenerationEnsemble([a], outputs="probabilities")
    np.testing.assert_allclose(
        as_probabilities.predict(x, verbose=0), a.predict(x, verbose=0),
        rtol=1e-6,
    )


def test_evaluates_with_crossentropy_on_probabilities(x):
    a, b = dense(seed=1), dense(seed=2)
    y = np.arange(32) % 3
    ensemble = GenerationEnsemble([a, b])
    ensemble.compile(loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
    logs = ensemble.evaluate(x, y, verbose=0, return_dict=True)
    average = (softmax(a.predict(x, verbose=0))
               + softmax(b.predict(x, verbose=0))) / 2
    np.testing.assert_allclose(
        logs["loss"], -np.log(average[np.arange(32), y]).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["accuracy"], (average.argmax(-1) == y).mean(), atol=1e-6
    )


def test_round_trips_through_a_keras_file_in_safe_mode(x, tmp_path):
    a, b = dense(seed=1), dense(activation="softmax", seed=2)
    ensemble = GenerationEnsemble([a, b], weights=[2, 1], name="gens")
    expected = ensemble.predict(x, verbose=0)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, GenerationEnsemble)
    assert loaded.name == "gens"
    assert loaded.member_weights == [2.0, 1.0]
    assert loaded.output_kinds == ["logits", "probabilities"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected,
                               rtol=1e-6)


def test_members_are_left_as_they_were(x):
    a, b = dense(seed=1), dense(seed=2)
    GenerationEnsemble([a, b]).predict(x, verbose=0)
    assert a.trainable and b.trainable
    assert kdtrain.ensemble.GenerationEnsemble is GenerationEnsemble


def test_bad_members_and_weights():
    a, b = dense(seed=1), dense(seed=2)
    with pytest.raises(ValueError, match="at least one"):
        GenerationEnsemble([])
    with pytest.raises(ValueError, match="keras.Model"):
        GenerationEnsemble([a, "b"])
    with pytest.raises(ValueError, match="same output shape"):
        GenerationEnsemble([a, dense(5)])
    with pytest.raises(ValueError, match="one number per model"):
        GenerationEnsemble([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        GenerationEnsemble([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="non-negative"):
        GenerationEnsemble([a, b], weights=[0, 0])
    with pytest.raises(ValueError, match="outputs"):
        GenerationEnsemble([a, b], outputs=["logits"])
    with pytest.raises(ValueError, match="outputs"):
        GenerationEnsemble([a, b], outputs="scores")


# Several teachers ---------------------------------------------------------------


def _scaled(model, factor):
    """`model` with its kernel multiplied: logits far beyond float32's
    probability range."""
    layer = model.layers[-1]
    layer.kernel.assign(layer.kernel * factor)
    layer.bias.assign(layer.bias * factor)
    return model


def _logsumexp(a, axis):
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))
            ).squeeze(axis)


def _log_softmax(z):
    return z - _logsumexp(z, -1)[..., None]


def _numpy_outputs(model, x):
    layer = model.layers[-1]
    return (x.astype("float64") @ layer.kernel.numpy().astype("float64")
            + layer.bias.numpy().astype("float64"))


def test_a_list_of_teachers_teaches_their_averaged_probabilities(x):
    # A logits teacher and a softmax teacher, logits up to about ±50.
    teachers = [_scaled(dense(5, seed=1), 25.0),
                _scaled(dense(5, activation="softmax", seed=2), 25.0)]
    z = [_numpy_outputs(t, x) for t in teachers]
    assert max(np.abs(v).max() for v in z) > 30
    student = dense(5, seed=3)
    distiller = kdtrain.Distiller(student, teachers)
    assert isinstance(distiller.teacher, GenerationEnsemble)
    assert distiller.teacher_outputs == "probabilities"
    # A subclassed model, but its kind is known.
    assert kdtrain.outputs.detect_output_kind(
        GenerationEnsemble(teachers)) == "probabilities"
    assert not any(t.trainable for t in teachers)
    # log of the mean probability, in float64: its softmax is the mean.
    log_mean = _logsumexp(np.stack([_log_softmax(v) for v in z]), 0) - np.log(2)
    logits = keras.ops.convert_to_numpy(distiller.teacher_logits(x))
    np.testing.assert_allclose(logits, log_mean, rtol=1e-5, atol=1e-4)
    temperature = 4.0
    distiller.compile(optimizer="sgd",
                      distillation_loss=kdtrain.losses.KLDivergence(
                          temperature=temperature))
    s = _numpy_outputs(student, x)
    q = softmax(log_mean / temperature)
    expected = temperature ** 2 * np.mean(np.sum(
        q * (np.log(q + 1e-300) - _log_softmax(s / temperature)), axis=-1))
    loss = distiller.compute_distillation_loss(
        None, distiller.teacher_logits(x), student(x))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_sigmoid_teachers_average_to_an_exact_logit(x):
    teachers = [_scaled(dense(1, activation="sigmoid", seed=s), 30.0)
                for s in (4, 5, 6)]
    ensemble = GenerationEnsemble(teachers)
    z = np.concatenate([_numpy_outputs(t, x) for t in teachers], axis=-1)
    assert np.abs(z).max() > 30
    # log(mean p) - log(mean (1 - p)), with p = sigmoid(z), in float64.
    log_p = _logsumexp(-np.logaddexp(0, -z), -1) - np.log(3)
    log_q = _logsumexp(-np.logaddexp(0, z), -1) - np.log(3)
    logits = keras.ops.convert_to_numpy(ensemble.ensemble_logits(x))
    np.testing.assert_allclose(logits[:, 0], log_p - log_q, rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(sigmoid(logits[:, 0]),
                               sigmoid(z).mean(-1), rtol=1e-5, atol=1e-6)


def test_the_cache_holds_an_ensembles_logits(x):
    teachers = [_scaled(dense(5, seed=7), 20.0), dense(5, seed=8)]
    distiller = kdtrain.Distiller(dense(5, seed=9), teachers)
    cache = kdtrain.TeacherOutputCache.compute(distiller.teacher, x)
    online = keras.ops.convert_to_numpy(distiller.teacher_logits(x))
    batch = next(iter(cache.dataset(x, np.zeros(len(x), "int64"),
                                    batch_size=len(x), shuffle=False)))
    cached = keras.ops.convert_to_numpy(batch[0]["teacher_logits"])
    # float16 rows relative to their maximum, restored with the offsets.
    np.testing.assert_allclose(softmax(cached), softmax(online), atol=1e-3)
