"""Multiply-accumulates per sample, counted from a model's layers.

A model's cost on a CPU follows, to a first approximation, the
multiply-accumulates (MACs) of its convolutions and dense layers. They are
counted here layer by layer, from the shapes each layer sees when the model
runs on one sample:

- `Conv1D`/`Conv2D`/`Conv3D` (grouped too) and `DepthwiseConv1D`/
  `DepthwiseConv2D`: output positions times the kernel's size
  (`kernel_size * input_channels / groups * filters`, or
  `kernel_size * input_channels * depth_multiplier`);
- `SeparableConv1D`/`SeparableConv2D`: output positions times the depthwise
  and the pointwise kernel's sizes;
- `Conv1DTranspose`/`Conv2DTranspose`/`Conv3DTranspose`: input positions
  times the kernel's size;
- `Dense`: the positions it is applied to times `input_units * units`;
- `BatchNormalization`, `LayerNormalization`, `GroupNormalization`,
  `Normalization`: one per output element (their scale and shift at
  inference).

Element-wise operations, activations, pooling, padding, reshaping and
`Embedding` lookups count zero. Any other layer with weights
(`EinsumDense`, attention, recurrent or custom layers) is refused with a
`ValueError` rather than counted as free. Nested models are counted through, and a `GenerationEnsemble` costs
the sum of its members.

Example:

```python
model = keras.Sequential([keras.Input((8, 8, 1)),
                          keras.layers.Conv2D(4, 3, padding="same"),
                          keras.layers.Flatten(),
                          keras.layers.Dense(10)])
kdtrain.macs.count_macs(model)  # 8*8 * 3*3*1*4 + 256*10 = 4864
```
"""

import math


def _layer_classes():
    import keras

    layers = keras.layers
    return {
        "separable": (layers.SeparableConv1D, layers.SeparableConv2D),
        "transpose": (layers.Conv1DTranspose, layers.Conv2DTranspose,
                      layers.Conv3DTranspose),
        "conv": (layers.Conv1D, layers.Conv2D, layers.Conv3D,
                 layers.DepthwiseConv1D, layers.DepthwiseConv2D),
        "dense": (layers.Dense,),
        "normalization": (layers.BatchNormalization,
                          layers.LayerNormalization,
                          layers.GroupNormalization, layers.Normalization),
        "lookup": (layers.Embedding,),
    }


def _size(shape):
    return math.prod(int(d) for d in shape)


def _positions(layer, shape):
    """The spatial positions of a (batch of one) convolution tensor shape."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return _size(shape[2:])
    return _size(shape[1:-1])


def layer_macs(layer, input_shape, output_shape):
    """The multiply-accumulates of one call of a (non-model) layer.

    Args:
        layer: A built `keras.layers.Layer`.
        input_shape: The shape of its (first) input, batch axis of 1.
        output_shape: The shape of its output, batch axis of 1.

    Returns:
        An int; 0 for layers without weights that the count leaves out.

    Raises:
        ValueError: A layer with weights of a kind not counted here.

    Example:

    >>> dense = keras.layers.Dense(3)
    >>> dense.build((None, 4))
    >>> layer_macs(dense, (1, 4), (1, 3))
    12
    """
    kinds = _layer_classes()
    if isinstance(layer, kinds["separable"]):
        return _positions(layer, output_shape) * (
            _size(layer.depthwise_kernel.shape)
            + _size(layer.pointwise_kernel.shape))
    if isinstance(layer, kinds["transpose"]):
        return _positions(layer, input_shape) * _size(layer.kernel.shape)
    if isinstance(layer, kinds["conv"]):
        return _positions(layer, output_shape) * _size(layer.kernel.shape)
    if isinstance(layer, kinds["dense"]):
        return _size(input_shape[:-1]) * _size(layer.kernel.shape)
    if isinstance(layer, kinds["normalization"]):
        return _size(output_shape)
    inner = getattr(layer, "dense", None)
    if isinstance(inner, kinds["dense"]):  # a Dense layer's logits
        return _size(input_shape[:-1]) * _size(inner.kernel.shape)
    if layer.weights and not isinstance(layer, kinds["lookup"]):
        raise ValueError(
            f"Cannot count the MACs of layer {layer.name!r} "
            f"({type(layer).__name__}): it has weights but is none of the "
            "layers counted here (convolutions, Dense, normalization), and "
            "counting it as free would understate the model's cost."
        )
    return 0


def _shape_of(value):
    import keras

    first = keras.tree.flatten(value)[0]
    return tuple(first.shape)


class _Counter:
    """Counts a model's MACs as its graph runs on symbolic tensors."""

    def __init__(self):
        self.total = 0

    def model(self, model, inputs):
        """Counts `model` called on the KerasTensors `inputs`; returns its
        output spec."""
        import keras

        members = getattr(model, "members", None)
        if members is not None and getattr(model, "outputs_probabilities",
                                           False):  # GenerationEnsemble
            for member in members:
                self.model(member, inputs)
            return model.compute_output_spec(inputs)
        graph = model
        if isinstance(model, keras.Sequential):
            graph = model._functional
            if graph is None:  # built without an Input: layer by layer
                outputs = inputs
                for layer in model.layers:
                    outputs = self.call(layer)(outputs)
                return outputs
        if not hasattr(graph, "_run_through_graph"):
            raise ValueError(
                f"Cannot count the MACs of {model.name!r}: a subclassed "
                "model's layers and their shapes cannot be seen. Count a "
                "functional or Sequential model."
            )
        return graph._run_through_graph(inputs, operation_fn=self.call)

    def call(self, operation):
        """`operation` as a function counting it and returning its spec."""
        import keras

        def counted(*args, **kwargs):
            if isinstance(operation, keras.Model):
                return self.model(operation, args[0] if len(args) == 1
                                  else list(args))
            outputs = operation.compute_output_spec(*args, **kwargs)
            if isinstance(operation, keras.layers.Layer) and args:
                self.total += layer_macs(operation, _shape_of(args[0]),
                                         _shape_of(outputs))
            return outputs

        return counted


def count_macs(model, input_shape=None):
    """The multiply-accumulates of one sample through `model`.

    See the module's docstring for what is counted.

    Args:
        model: A built functional or Sequential `keras.Model` (nested
            models included), or a `GenerationEnsemble` of such models.
        input_shape: One sample's shape, without the batch axis; defaults
            to the model's input shape, which must then be fully known.

    Returns:
        An int.

    Raises:
        ValueError: A subclassed model, or an unknown input size.

    Example:

    >>> model = keras.Sequential([keras.Input((64,)),
    ...                           keras.layers.Dense(16),
    ...                           keras.layers.Dense(10)])
    >>> count_macs(model)
    1184
    """
    import keras

    if input_shape is None:
        input_shape = input_shape_of(model)
    input_shape = tuple(input_shape)
    if any(d is None for d in input_shape):
        raise ValueError(
            "Counting MACs needs every size of one sample. Received: "
            f"input_shape={input_shape}"
        )
    counter = _Counter()
    counter.model(model, keras.KerasTensor((1, *input_shape),
                                           dtype="float32"))
    return int(counter.total)


def input_shape_of(model):
    """The shape of one sample of `model`'s (first) input, or None."""
    members = getattr(model, "members", None)
    if members:
        return input_shape_of(members[0])
    try:
        return tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
