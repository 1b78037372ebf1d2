"""Traced inference, once per model: shared by the teacher-output cache and
the evaluation of a chain.

Every `predict` or `evaluate` of a new model traces a new graph, and in a
Born-Again chain each model is run by several of them (its evaluation, the
cache of its outputs as the next teacher, each ensemble it belongs to).
Here each model gets one `tf.function` per input signature, with an
unknown batch size, so a model is traced once however often and on
whatever split it is run.
"""

import keras
import numpy as np
import tensorflow as tf

# Kept in the model's own __dict__ (out of Keras' tracking): a function
# lives exactly as long as its model.
_ATTRIBUTE = "_kdtrain_traced"


def _signature(batch):
    return keras.tree.map_structure(
        lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype)),
        batch,
    )


def traced(model, name, body, batch):
    """`body` as a `tf.function` kept for `model`, `name` and `batch`'s
    signature (shapes without the batch axis, dtypes).

    Args:
        model: The `keras.Model` the function runs; the function lives as
            long as the model does.
        name: Which function of the model (e.g. `"outputs"`).
        body: The function of one batch of inputs.
        batch: An example batch, for the signature.

    Returns:
        The traced function.

    Example:

    >>> infer = traced(model, "outputs",
    ...                lambda x: model(x, training=False), x_test[:1])
    >>> outputs = infer(x_test[:256])
    """
    signature = _signature(batch)
    functions = model.__dict__.setdefault(_ATTRIBUTE, {})
    key = (name, repr(signature))
    if key not in functions:
        functions[key] = tf.function(body, input_signature=[signature])
    return functions[key]


def outputs(model, batch):
    """`model(batch, training=False)` through the model's traced function,
    as a NumPy array."""
    infer = traced(model, "outputs",
                   lambda x: model(x, training=False), batch)
    return np.asarray(infer(batch))
