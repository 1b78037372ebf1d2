"""A registry of model builders addressed by name (`"wrn-28-1"`, ...)."""

import numbers

import keras

from kdtrain import validation
from kdtrain.models.names import APPLICATIONS
from kdtrain.models.names import WRN_PATTERN
from kdtrain.models.names import WRN_RE as _WRN_RE
from kdtrain.models.names import normalize_name as _normalize_name
from kdtrain.models.wide_resnet import OUTPUT_MODES
from kdtrain.models.wide_resnet import WideResNet

APPLICATION_MIN_SIZE = 32

_REGISTRY = {}


def register(name, builder, *, overwrite=False):
    """Registers a model builder under `name`.

    Args:
        name: String, the name passed to `build()` (case-insensitive).
            Names matching `"wrn-<depth>-<width>"` are reserved.
        builder: Callable `builder(*, num_classes, input_shape, output,
            **kwargs)` returning a `keras.Model`. `output` is one of
            `"logits"`, `"softmax"` or `"sigmoid"`.
        overwrite: Bool, whether an existing name may be replaced.
            Defaults to `False`.

    Returns:
        The `builder`, unchanged.

    Example:

    >>> def tiny(*, num_classes, input_shape, output="logits"):
    ...     inputs = keras.Input(input_shape)
    ...     x = keras.layers.Flatten()(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
    >>> register("tiny_mlp", tiny)
    """
    key = _normalize_name(name)
    if not key:
        raise ValueError("Model name must not be empty.")
    if _WRN_RE.match(key):
        raise ValueError(
            f"Names matching {WRN_PATTERN!r} are reserved for WideResNet. "
            f"Received: name={name!r}"
        )
    if not callable(builder):
        raise ValueError(f"`builder` must be callable. Received: {builder!r}")
    if key in _REGISTRY and not overwrite:
        raise ValueError(
            f"A model named {key!r} is already registered; pass "
            "overwrite=True to replace it."
        )
    _REGISTRY[key] = builder
    return builder


def available():
    """Lists the names accepted by `build()`.

    Returns:
        A sorted list of registered names, plus the pattern
        `"wrn-<depth>-<width>"` (e.g. `"wrn-28-1"`, `"wrn-16-4"`).

    Example:

    >>> "mobilenet_v2" in available()
    True
    """
    return [WRN_PATTERN] + sorted(_REGISTRY)


def build(name, *, num_classes, input_shape, output="logits", **kwargs):
    """Builds a classifier by name, with random weights.

    Args:
        name: `"wrn-<depth>-<width>"` (e.g. `"wrn-16-1"`, kwargs such as
            `dropout=0.3` or `weight_decay=5e-4` go to `WideResNet`), a
            `keras.applications` family (`"mobilenet_v2"`,
            `"mobilenet_v3_small"`, `"resnet50"`, `"efficientnet_v2_b0"`)
            or a name added with `register()`. Case-insensitive.
        num_classes: Positive int, number of output units (1 for a binary
            sigmoid/logit head).
        input_shape: Tuple `(height, width, channels)`.
        output: `"logits"` (default), `"softmax"` or `"sigmoid"`.
        **kwargs: Passed to the builder (e.g. `alpha=0.35` for
            `"mobilenet_v2"`, `name=...`).

    Returns:
        An uncompiled `keras.Model`.

    Example:

    >>> model = build("wrn-16-1", num_classes=10, input_shape=(32, 32, 3))
    >>> model.output_shape
    (None, 10)
    """
    if output not in OUTPUT_MODES:
        raise ValueError(
            f"`output` must be one of {OUTPUT_MODES}. Received: output={output!r}"
        )
    key = _normalize_name(name)
    match = _WRN_RE.match(key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        return WideResNet(
            num_classes,
            depth,
            width,
            input_shape=input_shape,
            output=output,
            **kwargs,
        )
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown model name {name!r}. Known names: "
            f"{', '.join(available())} (e.g. 'wrn-28-1')."
        )
    return _REGISTRY[key](
        num_classes=num_classes, input_shape=input_shape, output=output, **kwargs
    )


def _check_application_input(app_name, input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool)
        for d in shape
    ):
        raise ValueError(
            f"{app_name!r} needs a fully known input_shape "
            f"(height, width, 3). Received: input_shape={input_shape!r}"
        )
    height, width, channels = shape
    if channels != 3:
        raise ValueError(
            f"{app_name!r} (keras.applications) needs 3-channel input; "
            f"received input_shape={input_shape!r}. Load the data in RGB "
            '(e.g. color_mode="rgb") or use a "wrn-<depth>-<width>" model, '
            "which accepts any number of channels."
        )
    if height < APPLICATION_MIN_SIZE or width < APPLICATION_MIN_SIZE:
        raise ValueError(
            f"{app_name!r} (keras.applications) needs height and width of at "
            f"least {APPLICATION_MIN_SIZE}; received input_shape="
            f"{input_shape!r}. Resize the images (e.g. image_size=(96, 96)) "
            'or use a "wrn-<depth>-<width>" model.'
        )
    return shape


def _application_builder(app_name, constructor, **defaults):
    def builder(*, num_classes, input_shape, output="logits", **kwargs):
        shape = _check_application_input(app_name, input_shape)
        num_classes = validation.integer("num_classes", num_classes, 1)
        if output == "sigmoid" and num_classes != 1:
            raise ValueError(
                '`output="sigmoid"` is for one-unit binary heads and needs '
                f"num_classes=1. Received: num_classes={num_classes}"
            )
        options = dict(defaults)
        options.update(kwargs)
        return constructor(
            input_shape=shape,
            weights=None,
            include_top=True,
            classes=int(num_classes),
            classifier_activation=None if output == "logits" else output,
            **options,
        )

    builder.__name__ = f"build_{app_name}"
    builder.__doc__ = (
        f"Builds keras.applications {constructor.__name__} with "
        "`weights=None` (random initialization, never downloads)."
    )
    return builder


for _name, (_constructor, _defaults) in APPLICATIONS.items():
    register(_name, _application_builder(
        _name, getattr(keras.applications, _constructor), **_defaults
    ))
