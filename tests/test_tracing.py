"""Seeding that keeps a traced training step."""

import random

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python import pywrap_tfe

from conftest import mlp
from kdtrain import tracing


def _draws():
    """What a seed decides: a fresh model's weights, Python's and NumPy's
    draws, a Keras random op and a tf.data shuffle without its own seed."""
    model = mlp(8, seed=None)
    return (
        [w.copy() for w in model.get_weights()],
        random.random(),
        float(np.random.rand()),
        keras.ops.convert_to_numpy(keras.random.uniform((3,))),
        list(tf.data.Dataset.range(20).shuffle(20).as_numpy_iterator()),
    )


def _assert_same(a, b):
    for weight_a, weight_b in zip(a[0], b[0]):
        np.testing.assert_array_equal(weight_a, weight_b)
    assert a[1:3] == b[1:3]
    np.testing.assert_array_equal(a[3], b[3])
    assert a[4] == b[4]


def test_set_random_seed_seeds_what_keras_seeds():
    keras.utils.set_random_seed(11)
    expected = _draws()
    tracing.set_random_seed(11)
    _assert_same(_draws(), expected)
    tracing.set_random_seed(12)
    other = _draws()
    assert other[4] != expected[4] and other[1] != expected[1]


def test_set_random_seed_keeps_tensorflows_caches(monkeypatch):
    cleared = []
    original = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches",
                        lambda handle: cleared.append(1) or original(handle))
    keras.utils.set_random_seed(3)  # Keras' way empties them
    assert cleared == [1]
    tracing.set_random_seed(3)
    assert cleared == [1]  # kdtrain's does not: traced steps stay ready
