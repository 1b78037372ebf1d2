"""Building a model's training state before `fit` traces its step.

Without a distribution strategy, Keras creates the optimizer's slots and the
compiled metrics' variables inside the first trace of the training step. A
`tf.function` that creates variables is traced twice (once creating them,
once more without), so every `fit` of a fresh model pays for tracing its
step two times. Building that state beforehand, symbolically, as Keras itself
does under a strategy, halves the first step's cost. `set_random_seed` seeds
a generation without dropping the steps TensorFlow has already compiled.
"""

import random

import keras
import numpy as np
import tensorflow as tf


def spec_of(data):
    """Symbolic batches (`keras.KerasTensor`s) matching `data`.

    Args:
        data: A `tf.data.Dataset` (its `element_spec`), or a structure of
            arrays whose first axis is the sample axis.

    Returns:
        The same structure of `keras.KerasTensor`s with an unknown batch
        size, or None where `data` is None.
    """
    spec = getattr(data, "element_spec", None)
    if spec is not None:
        return keras.tree.map_structure(
            lambda s: keras.KerasTensor(s.shape, s.dtype.name), spec
        )

    def symbolic(array):
        if array is None:
            return None
        array = np.asarray(array) if not hasattr(array, "shape") else array
        return keras.KerasTensor((None,) + tuple(array.shape[1:]),
                                 keras.backend.standardize_dtype(array.dtype))

    return keras.tree.map_structure(symbolic, data)


def build_training_state(model, batch):
    """Creates `model`'s optimizer and metric variables for `batch`'s shapes.

    Call it after `compile` and before `fit`: the training step is then
    traced once instead of twice. A model already built is left as it is.

    Args:
        model: A compiled `keras.Model`.
        batch: `(x, y)` or `(x, y, sample_weight)` of `keras.KerasTensor`s,
            e.g. from `spec_of`.

    Example:

    >>> build_training_state(model, spec_of((x_train, y_train)))
    >>> model.fit(x_train, y_train)
    """
    if model.optimizer is not None and model.optimizer.built and (
        model._compile_metrics is None or model._compile_metrics.built
    ):
        return
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)


def symbolic_batch(x, y=None, sample_weight=None):
    """A symbolic batch of `fit`'s `x`, `y` and `sample_weight`.

    Returns:
        `spec_of` a `tf.data.Dataset` or of the arrays; None for other
        data (a `PyDataset`, a generator), whose batches only iterating
        would show.
    """
    if isinstance(x, tf.data.Dataset):
        return spec_of(x)
    parts = [p for p in (x, y, sample_weight) if p is not None]
    if x is None or not all(
        isinstance(a, np.ndarray) for p in parts for a in keras.tree.flatten(p)
    ):
        return None
    arrays = (x, y, sample_weight) if sample_weight is not None else (x, y)
    return spec_of(arrays)


def set_random_seed(seed):
    """`keras.utils.set_random_seed(seed)`, keeping TensorFlow's functions.

    Seeds Python's `random`, NumPy, Keras' global seed generator and
    TensorFlow's global seed, as Keras does; but where
    `tf.random.set_seed` also empties the eager context's caches (so that
    stateful random kernels run eagerly restart their streams), this keeps
    them. Emptied caches drop every instantiated function, so the next call
    of an already traced train step optimizes and instantiates its graph
    again: 0.5 s of CPU for each generation of a chain that reuses its
    `Distiller` (WRN-16-1 on digits, 2 cores), more than the step itself.
    kdtrain draws its random numbers statelessly, from seeds; only a
    stateful TensorFlow random op run eagerly (`tf.random.uniform` outside
    a `tf.function`) would continue its stream instead of restarting it.

    Args:
        seed: An integer.
    """
    from tensorflow.python.eager import context  # noqa: PLC0415

    eager = context.context()
    if not (tf.executing_eagerly() and hasattr(eager, "_rng")
            and hasattr(eager, "_seed")):  # another TensorFlow: Keras' way
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state  # noqa: PLC0415
    from keras.src.random import seed_generator  # noqa: PLC0415

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR,
                                      None)
    random.seed(seed)
    np.random.seed(seed)
    # What tf.random.set_seed sets in eager mode, less the cache clearing.
    eager._seed = seed
    eager._rng = random.Random(seed)
