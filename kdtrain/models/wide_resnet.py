"""Wide Residual Networks (Zagoruyko & Komodakis, 2016) as a Keras model."""

import numbers

import keras

from kdtrain import validation

OUTPUT_MODES = ("logits", "softmax", "sigmoid")
PADDINGS = ("symmetric", "same")
# The authors' batch normalization: PyTorch's momentum 0.1 (Keras' 0.9) and
# epsilon 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# What a configuration without these keys was built with (Keras' defaults).
_UNSTATED = {"padding": "same", "bn_momentum": 0.99, "bn_epsilon": 1e-3}
GROUP_NAMES = ("group_1", "group_2", "group_3")
MIN_SPATIAL_SIZE = 4


def _check_positive_int(name, value):
    return validation.integer(name, value, 1)


def valid_depths(limit=10):
    """Returns the first `limit` depths allowed for a WRN (6n + 4)."""
    return [6 * n + 4 for n in range(1, limit + 1)]


def _check_input_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ValueError(
            "`input_shape` must be a 3-tuple (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    height, width, channels = shape
    if channels is None:
        raise ValueError(
            "The channel dimension of `input_shape` must be known. "
            f"Received: input_shape={input_shape!r}"
        )
    _check_positive_int("input_shape[-1]", channels)
    for dim_name, dim in (("height", height), ("width", width)):
        if dim is None:
            continue
        if (
            isinstance(dim, bool)
            or not isinstance(dim, numbers.Integral)
            or dim < MIN_SPATIAL_SIZE
        ):
            raise ValueError(
                f"Input {dim_name} {dim!r} is too small for a WideResNet: "
                "groups 2 and 3 downsample by 2 each, so height and width "
                f"must be at least {MIN_SPATIAL_SIZE} (then group_3 is "
                f"1x1). Received: input_shape={input_shape!r}"
            )
    return tuple(None if d is None else int(d) for d in shape)


def _check_arguments(num_classes, depth, width, input_shape, dropout, output,
                     weight_decay, padding, bn_momentum, bn_epsilon):
    """The WideResNet arguments, checked and normalized."""
    num_classes = _check_positive_int("num_classes", num_classes)
    depth = _check_positive_int("depth", depth)
    width = _check_positive_int("width", width)
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(
            "`depth` must be 6 * n + 4 with n >= 1; valid depths are "
            f"{', '.join(map(str, valid_depths(8)))}, ... "
            f"Received: depth={depth}"
        )
    shape = _check_input_shape(input_shape)
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(
            "`dropout` must be a float in [0, 1). "
            f"Received: dropout={dropout!r}"
        )
    if output not in OUTPUT_MODES:
        raise ValueError(
            f"`output` must be one of {OUTPUT_MODES}. "
            f"Received: output={output!r}"
        )
    if output == "sigmoid" and num_classes != 1:
        raise ValueError(
            '`output="sigmoid"` is for one-unit binary heads and needs '
            f"num_classes=1. Received: num_classes={num_classes}"
        )
    if not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
        raise ValueError(
            "`weight_decay` must be a non-negative float. "
            f"Received: weight_decay={weight_decay!r}"
        )
    if padding not in PADDINGS:
        raise ValueError(
            f"`padding` must be one of {PADDINGS}. "
            f"Received: padding={padding!r}"
        )
    if (isinstance(bn_momentum, bool) or not isinstance(bn_momentum,
                                                        numbers.Real)
            or not 0.0 <= bn_momentum < 1.0):
        raise ValueError(
            "`bn_momentum` must be a float in [0, 1). "
            f"Received: bn_momentum={bn_momentum!r}"
        )
    if (isinstance(bn_epsilon, bool) or not isinstance(bn_epsilon,
                                                       numbers.Real)
            or not bn_epsilon > 0.0):
        raise ValueError(
            "`bn_epsilon` must be a positive float. "
            f"Received: bn_epsilon={bn_epsilon!r}"
        )
    return (num_classes, depth, width, shape, float(dropout),
            float(weight_decay), float(bn_momentum), float(bn_epsilon))


def _graph(num_classes, depth, width, shape, dropout, output, weight_decay,
           padding, bn_momentum, bn_epsilon):
    """The network's `(inputs, outputs)` (checked arguments)."""
    blocks_per_group = (depth - 4) // 6
    regularizer = (
        keras.regularizers.L2(weight_decay) if weight_decay else None
    )

    def conv(x, filters, kernel_size, strides, layer_name):
        layer_padding = "same"
        if padding == "symmetric" and strides > 1 and kernel_size > 1:
            # On an even size Keras' "same" pads a strided convolution only
            # bottom and right, so its windows would center on odd pixels
            # while the 1x1 shortcut samples even ones. Padding both sides
            # by kernel_size // 2 centers them on the shortcut's pixels.
            x = keras.layers.ZeroPadding2D(
                kernel_size // 2, name=f"{layer_name}_pad"
            )(x)
            layer_padding = "valid"
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=layer_padding,
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer,
            name=layer_name,
        )(x)

    def bn_relu(x, prefix):
        x = keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon, name=f"{prefix}_bn"
        )(x)
        return keras.layers.ReLU(name=f"{prefix}_relu")(x)

    inputs = keras.Input(shape=shape, name="image")
    x = conv(inputs, 16, 3, 1, "stem_conv")
    in_filters = 16
    for group, (filters, stride) in enumerate(
        ((16 * width, 1), (32 * width, 2), (64 * width, 2)), start=1
    ):
        for block in range(1, blocks_per_group + 1):
            prefix = f"group_{group}_block_{block}"
            strides = stride if block == 1 else 1
            pre = bn_relu(x, f"{prefix}_1")
            if strides != 1 or in_filters != filters:
                shortcut = conv(pre, filters, 1, strides,
                                f"{prefix}_shortcut")
            else:
                shortcut = x
            y = conv(pre, filters, 3, strides, f"{prefix}_conv_1")
            y = bn_relu(y, f"{prefix}_2")
            if dropout:
                y = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(y)
            y = conv(y, filters, 3, 1, f"{prefix}_conv_2")
            add_name = (
                f"group_{group}" if block == blocks_per_group
                else f"{prefix}_add"
            )
            x = keras.layers.Add(name=add_name)([shortcut, y])
            in_filters = filters
    x = bn_relu(x, "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_regularizer=regularizer, name="logits"
    )(x)
    if output != "logits":
        outputs = keras.layers.Activation(output, name="probabilities")(outputs)
    return inputs, outputs


@keras.saving.register_keras_serializable(package="kdtrain")
class WideResNet(keras.Model):
    """Wide Residual Network (WRN-depth-width) for image classification.

    The network of Zagoruyko & Komodakis, "Wide Residual Networks"
    (BMVC 2016), with pre-activation basic blocks:

    - a 3x3 convolution with 16 filters (the stem);
    - three groups of `(depth - 4) // 6` blocks with `16 * width`,
      `32 * width` and `64 * width` filters and strides 1, 2, 2. Each
      block computes BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 and adds a
      shortcut: the identity, or a 1x1 convolution (applied to the
      pre-activated input, as in the authors' code) wherever the number
      of filters or the resolution changes - so also on the first block
      of group 1 when `width > 1`;
    - BN, ReLU, global average pooling and `Dense(num_classes)`.

    Convolutions have no bias (each is followed by batch normalization)
    and use He-normal initialization. A strided 3x3 convolution pads one
    pixel on every side, as the authors' `padding=1` does, so its windows
    center on the pixels its block's strided 1x1 shortcut samples (on an
    even size Keras' `padding="same"` would pad only bottom and right, and
    the two branches would sample different pixels). Batch normalization
    uses the authors' settings, PyTorch's momentum 0.1 and epsilon 1e-5:
    Keras' `momentum=0.9, epsilon=1e-5` rather than its defaults 0.99 and
    1e-3. The output of each group is the `Add` layer of its last block,
    named `"group_1"`, `"group_2"` and `"group_3"` (use them e.g. for
    attention transfer).

    Differences from the listing in the seed report, which this class
    does not reproduce: the report's model applied BN-ReLU to the raw
    input, had an extra 1x1 convolution after the stem, used a projection
    shortcut only when the stride changes and strided the shortcut's 1x1
    convolution on the raw (not pre-activated) input. Here the paper is
    followed. Dropout, as in the paper ("between convolutions and after
    ReLU"), sits after the second ReLU, right before the second
    convolution.

    Args:
        num_classes: Positive int, number of units of the final dense
            layer. Use 1 with `output="sigmoid"` (or `"logits"`) for
            binary problems.
        depth: Positive int, total depth `6 * n + 4` (10, 16, 22, 28, ...).
        width: Positive int, widening factor `k`.
        input_shape: Tuple `(height, width, channels)`; height and width
            must be at least 4 (or `None` for variable sizes), channels
            must be known.
        dropout: Float in `[0, 1)`, dropout rate inside each block.
            Defaults to `0.0` (no dropout layers are created).
        output: One of `"logits"` (default, the dense layer named
            `"logits"` is the output), `"softmax"` or `"sigmoid"` (the
            logits are followed by `Activation(output, name="probabilities")`).
            `"sigmoid"` requires `num_classes=1`.
        weight_decay: Non-negative float. When positive, an L2 penalty
            `weight_decay * sum(w ** 2)` is added for every convolution
            and dense kernel (SGD weight decay `lambda` corresponds to
            `weight_decay = lambda / 2`). Defaults to `0.0`.
        padding: `"symmetric"` (default, explained above) or `"same"`
            (Keras' padding for every convolution).
        bn_momentum: Float in `[0, 1)`, the batch normalization momentum
            in Keras' terms. Defaults to `0.9`.
        bn_epsilon: Positive float, the batch normalization epsilon.
            Defaults to `1e-5`.
        name: Optional model name, defaults to `"wrn_{depth}_{width}"`.

    A configuration without `padding`, `bn_momentum` or `bn_epsilon`
    (`from_config`) gets `"same"`, `0.99` and `1e-3`, the settings it was
    built with, so such a saved model loads and computes as it did.

    Returns:
        A functional `keras.Model` mapping images to `(batch, num_classes)`
        logits or probabilities.

    Example:

    >>> model = WideResNet(10, depth=16, width=1, input_shape=(32, 32, 3))
    >>> model.get_layer("group_3").output.shape
    (None, 8, 8, 64)
    """

    def __init__(
        self,
        num_classes,
        depth,
        width,
        *,
        input_shape,
        dropout=0.0,
        output="logits",
        weight_decay=0.0,
        padding="symmetric",
        bn_momentum=BN_MOMENTUM,
        bn_epsilon=BN_EPSILON,
        name=None,
        **kwargs,
    ):
        (num_classes, depth, width, shape, dropout, weight_decay,
         bn_momentum, bn_epsilon) = _check_arguments(
            num_classes, depth, width, input_shape, dropout, output,
            weight_decay, padding, bn_momentum, bn_epsilon,
        )
        if name is None:
            name = f"wrn_{depth}_{width}"
        inputs, outputs = _graph(num_classes, depth, width, shape, dropout,
                                 output, weight_decay, padding, bn_momentum,
                                 bn_epsilon)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

        # Constructor arguments; set after `super().__init__()` as in
        # keras_hub backbones. `input_shape` and `output` are properties of
        # functional models, hence the different attribute names.
        self.num_classes = num_classes
        self.depth = depth
        self.width = width
        self.image_shape = shape
        self.dropout = dropout
        self.output_mode = output
        self.weight_decay = weight_decay
        self.padding = padding
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "depth": self.depth,
            "width": self.width,
            "input_shape": self.image_shape,
            "dropout": self.dropout,
            "output": self.output_mode,
            "weight_decay": self.weight_decay,
            "padding": self.padding,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = {**_UNSTATED, **config}
        trainable = config.pop("trainable", True)
        config.pop("dtype", None)
        if config.get("input_shape") is not None:
            config["input_shape"] = tuple(config["input_shape"])
        model = cls(**config)
        model.trainable = trainable
        return model
