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
