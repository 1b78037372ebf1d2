"""Output kinds: whether a classifier emits logits or probabilities.

Distillation compares distributions, so kdtrain needs each model's outputs as
logits. A model whose last layer is a softmax (every `keras.applications`
classifier by default) or a one-unit sigmoid emits probabilities. Where that
softmax or sigmoid can be seen in the model's graph, `logits_model` reads the
exact pre-activation logits from it, with the model's own weights; otherwise
`to_logits` inverts the probabilities, which float32 only allows within the
bounds its docstring states.
"""

import weakref

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
    if getattr(model, "outputs_probabilities", False):  # GenerationEnsemble
        return "probabilities"
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

    Probabilities are inverted as far as float32 allows: a softmax's
    log-probabilities are floored at `log(tiny) = -87.34`, and a sigmoid
    output is clipped to `[tiny, 1 - eps]`, so only logits within
    `[-87.34, 15.94]` come back (those near 15.94 coarsely, as `1 - p`
    nears float32's resolution). `model_logits` avoids these bounds where
    the model's graph shows its final activation.

    Args:
        outputs: Tensor of shape `(batch, classes)`.
        kind: `"logits"` or `"probabilities"`.

    Returns:
        The logits; for probabilities, log-probabilities (multi-class) or the
        inverse sigmoid (a single unit), within the bounds above.

    Example:

    ```python
    p = keras.ops.convert_to_tensor([[0.25, 0.75]])
    kdtrain.outputs.to_logits(p, "probabilities")  # [[log 0.25, log 0.75]]
    ```
    """
    outputs = ops.cast(outputs, "float32")
    if kind == "logits":
        return outputs
    if outputs.shape[-1] == 1:
        p = ops.clip(outputs, _TINY, 1.0 - _EPSILON)
        return ops.log(p) - ops.log1p(-p)
    return ops.log(ops.maximum(outputs, _TINY))


class _DenseLogits(keras.layers.Layer):
    """A `Dense` layer's output before its activation, from its own weights."""

    def __init__(self, dense, **kwargs):
        kwargs.setdefault("name", f"{dense.name}_pre_activation")
        super().__init__(dtype=dense.dtype_policy, **kwargs)
        self.dense = dense
        self.built = True

    def call(self, inputs):
        x = ops.matmul(inputs, self.dense.kernel)
        if self.dense.bias is not None:
            x = ops.add(x, self.dense.bias)
        return x

    def compute_output_shape(self, input_shape):
        return self.dense.compute_output_shape(input_shape)


def _pre_activation(tensor):
    """The symbolic input of the softmax or sigmoid that made `tensor`.

    Returns None unless `tensor` comes out of a plain `Dense` with a softmax
    or sigmoid activation, an `Activation` layer of either, a last-axis
    `Softmax` layer, or a nested model that ends in one of these.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    layer = history.operation
    node = layer._inbound_nodes[history.node_index]
    args, kwargs = node.arguments.args, node.arguments.kwargs
    if isinstance(layer, keras.Model):
        if len(layer.outputs) != 1:
            return None
        # Built afresh, not taken from `logits_model`: calling a cached model
        # here would tie it to this graph, and through it to `layer` itself,
        # which could then never be released.
        inner = _build_logits_model(layer)
        return None if inner is None else inner(*args, **kwargs)
    if len(args) != 1 or kwargs.get("mask") is not None:
        return None
    name = _activation_name(layer)
    if name == "sigmoid" and tensor.shape[-1] != 1:
        return None  # A multi-label head: not one distribution.
    if isinstance(layer, keras.layers.Softmax):
        last = len(tensor.shape) - 1
        return args[0] if layer.axis in (-1, last, [-1], [last]) else None
    if name not in ("softmax", "sigmoid"):
        return None
    if type(layer).call is keras.layers.Activation.call:
        return args[0]
    # A subclass's or a quantized layer's call may differ from Dense's.
    if (type(layer).call is keras.layers.Dense.call
            and layer.quantization_mode is None):
        return _DenseLogits(layer)(args[0])
    return None


def _build_logits_model(model):
    try:
        # A Sequential model has one input and no `input` structure.
        inputs = (model.inputs[0] if isinstance(model, keras.Sequential)
                  else model.input)
        outputs = list(model.outputs)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None  # Subclassed, or never called on symbolic inputs.
    logits = _pre_activation(outputs[0]) if outputs else None
    if logits is None:
        return None
    return keras.Model(
        inputs, logits if len(outputs) == 1 else [logits, *outputs[1:]],
        name=f"{model.name}_logits",
    )


# Built once per model and weakly keyed, so a discarded model is released; not
# an attribute of the model, which Keras would save with it.
_LOGITS_MODELS = weakref.WeakKeyDictionary()


def logits_model(model):
    """A model of the exact logits under `model`'s softmax or sigmoid.

    When the first output of a functional or Sequential model comes out of
    a softmax or a one-unit sigmoid (a `Dense` with that activation, an
    `Activation` or `Softmax` layer, or a nested model ending in one), the
    logits under it are part of the graph. This returns a functional model
    with the same inputs whose first output is that pre-activation tensor
    (other outputs unchanged). It calls `model`'s own layers, so it reads
    their weights as they are (nothing is copied), and it is built once per
    model.

    Args:
        model: A `keras.Model`.

    Returns:
        A functional `keras.Model`, or None where the final activation
        cannot be reached (a subclassed model, another kind of layer).

    Example:

    ```python
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]
    )
    logits = kdtrain.outputs.logits_model(model)
    logits(x)  # x @ kernel + bias: the softmax's input, not log(model(x))
    ```
    """
    try:
        return _LOGITS_MODELS[model]
    except KeyError:
        pass
    built = _build_logits_model(model)
    _LOGITS_MODELS[model] = built
    return built


def model_logits(model, inputs, kind):
    """A model's float32 logits on `inputs`, in inference mode.

    A probability head's exact logits come from `logits_model`; where that
    is None, its outputs are inverted by `to_logits`, within the bounds
    stated there.

    Args:
        model: A `keras.Model`.
        inputs: A batch of the model's inputs.
        kind: `"logits"` or `"probabilities"`: what `model` emits.

    Returns:
        The logits, shape `(batch, classes)`.

    Example:

    ```python
    logits = kdtrain.outputs.model_logits(teacher, x, "probabilities")
    ```
    """
    if kind == "probabilities" and hasattr(model, "ensemble_logits"):
        return model.ensemble_logits(inputs)  # GenerationEnsemble
    exact = logits_model(model) if kind == "probabilities" else None
    if exact is not None:
        return ops.cast(exact(inputs, training=False), "float32")
    return to_logits(model(inputs, training=False), kind)


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
