"""Output kinds: whether a classifier emits logits or probabilities.

Distillation compares distributions, so kdtrain needs each model's outputs as
logits. A model whose last layer is a softmax (every `keras.applications`
classifier by default) or a one-unit sigmoid emits probabilities; their
logarithm is a logit vector up to a constant, which keeps temperature scaling
exact: `softmax(log(p) / T) == softmax(z / T)` when `p = softmax(z)`.
"""

import keras
import numpy as np
from keras import ops

OUTPUT_KINDS = ("auto", "logits", "probabilities")

# Smallest normal float32: log-probabilities stay finite (>= -87.3) when a
# softmax underflows to exactly zero.
_TINY = float(np.finfo(np.float32).tiny)
# float32 cannot tell a sigmoid output closer than this to 1 from 1.
_EPSILON = float(np.finfo(np.float32).eps)


def validate_output_kind(kind, argument):
    if kind not in OUTPUT_KINDS:
        raise ValueError(
            f"`{argument}` must be one of {', '.join(map(repr, OUTPUT_KINDS))}. "
            f"Received: {argument}={kind!r}"
        )
    return kind


def _final_layer(model):
    """The layer that produces the model's (single) output, or None."""
    outputs = getattr(model, "_outputs", None) or []
    history = getattr(outputs[0], "_keras_history", None) if outputs else None
    if history is not None:
        layer = history.operation
    elif isinstance(model, keras.Sequential) and model.layers:
        layer = model.layers[-1]
    else:
        return None
    if isinstance(layer, keras.Model) and layer is not model:
        return _final_layer(layer) or layer
    return layer


def _activation_name(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def static_output_shape(model):
    """The model's output shape without the batch axis, or None if unknown."""
    try:
        return tuple(model.outputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def label_format(label_shape, classes):
    """How labels of `label_shape` fit an output of `classes` units.

    Args:
        label_shape: The labels' shape, batch axis included.
        classes: Units of the model's output (1 for a binary classifier).

    Returns:
        `"binary"` (0/1 for a single unit), `"sparse"` (integer classes) or
        `"categorical"` (one-hot rows).

    Raises:
        ValueError: Labels that cannot fit the output, naming both shapes.
    """
    shape = tuple(label_shape)
    column = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    if column:
        return "binary" if classes == 1 else "sparse"
    if classes != 1 and len(shape) == 2 and shape[1] == classes:
        return "categorical"
    raise ValueError(
        f"Labels of shape {shape} cannot fit the student's output of "
        f"{classes} unit(s): expected integer class labels of shape "
        f"(batch,) or (batch, 1)"
        + (
            " with values 0 and 1."
            if classes == 1
            else f", or one-hot labels of shape (batch, {classes})."
        )
    )


def crossentropy(label_format, from_logits):
    """The Keras crossentropy loss for labels of `label_format`."""
    if label_format == "binary":
        return keras.losses.BinaryCrossentropy(from_logits=from_logits)
    if label_format == "categorical":
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def label_crossentropy(y, logits, fmt):
    """Per-sample crossentropy of logits against labels of format `fmt`."""
    if fmt == "binary":
        y = ops.reshape(ops.cast(y, "float32"), (-1, 1))
        return keras.losses.binary_crossentropy(y, logits, from_logits=True)
    if fmt == "categorical":
        return keras.losses.categorical_crossentropy(
            ops.cast(y, "float32"), logits, from_logits=True
        )
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    return keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True
    )


def labels_as_distribution(y, classes, fmt):
    """Labels as float rows of the logits' shape (one-hot, or 0/1)."""
    if fmt == "sparse":
        y = ops.reshape(ops.cast(y, "int32"), (-1,))
        return ops.one_hot(y, classes, dtype="float32")
    return ops.reshape(ops.cast(y, "float32"), (-1, classes))


def output_units(model):
    """The size of the model's output's last axis, or None if unknown."""
    try:
        return model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def detect_output_kind(model):
    """Tells whether `model` ends in a softmax or sigmoid.

    Looks at the layer producing the output of a functional or Sequential
    model (nested models included): a `Softmax` layer, or any layer whose
    `activation` is softmax or sigmoid, means probabilities. A subclassed
    model's last operation cannot be seen, so it counts as logits; declare
    `"probabilities"` for such a model if it ends in a softmax.

    Args:
        model: A `keras.Model`.

    Returns:
        `"probabilities"` or `"logits"`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> kdtrain.outputs.detect_output_kind(model)
    'logits'
    """
    layer = _final_layer(model)
    if layer is None:
        return "logits"
    name = _activation_name(layer)
    if name == "softmax":
        return "probabilities"
    if name == "sigmoid":
        units = output_units(model)
        if units not in (None, 1):
            raise ValueError(
                f"Model {model.name!r} ends in a sigmoid over {units} units, "
                "a multi-label output. Distillation here needs one "
                "distribution per sample: a softmax over the classes or a "
                "single sigmoid unit."
            )
        return "probabilities"
    return "logits"


def resolve_output_kind(model, kind, argument):
    """Validates `kind` and resolves `"auto"` by looking at `model`."""
    validate_output_kind(kind, argument)
    return detect_output_kind(model) if kind == "auto" else kind


def to_logits(outputs, kind):
    """Converts a model's outputs to float32 logits.

    Args:
        outputs: Tensor of shape `(batch, classes)`.
        kind: `"logits"` or `"probabilities"`.

    Returns:
        The logits; for probabilities, log-probabilities (multi-class) or the
        exact inverse sigmoid (a single unit).
    """
    outputs = ops.cast(outputs, "float32")
    if kind == "logits":
        return outputs
    if outputs.shape[-1] == 1:
        p = ops.clip(outputs, _TINY, 1.0 - _EPSILON)
        return ops.log(p) - ops.log1p(-p)
    return ops.log(ops.maximum(outputs, _TINY))


def to_probabilities(outputs, kind):
    """Converts a model's outputs to float32 class probabilities.

    Args:
        outputs: Tensor of shape `(batch, classes)`.
        kind: `"logits"` or `"probabilities"`.

    Returns:
        Softmax probabilities, or the sigmoid for a single unit.
    """
    outputs = ops.cast(outputs, "float32")
    if kind == "probabilities":
        return outputs
    if outputs.shape[-1] == 1:
        return ops.sigmoid(outputs)
    return ops.softmax(outputs, axis=-1)
