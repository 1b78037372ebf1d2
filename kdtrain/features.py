"""Intermediate outputs of a model, taken without rebuilding it by hand."""

import keras


def _layer_names(model):
    return [layer.name for layer in model.layers]


def feature_model(model, layer_names, role):
    """A model returning `[outputs, *outputs of the named layers]`.

    It shares the layers and weights of `model`, so training it trains
    `model`, and one forward pass gives the logits and the features.

    Args:
        model: A functional or Sequential `keras.Model`.
        layer_names: Names of layers of `model` (top-level layers).
        role: `"student"` or `"teacher"`, for error messages.

    Returns:
        A functional `keras.Model`.

    Raises:
        ValueError: A name that is not a layer of `model` (the message lists
            its layers), or a subclassed model whose layers' outputs cannot
            be reached.

    Example:

    >>> extractor = feature_model(wrn, ["group_1", "group_3"], "teacher")
    >>> logits, group_1, group_3 = extractor(images)
    """
    known = _layer_names(model)
    for name in layer_names:
        if name not in known:
            raise ValueError(
                f"The {role} {model.name!r} has no layer {name!r}. Its "
                f"layers: {', '.join(known)}."
            )
    try:
        inputs = model.inputs
        outputs = [model.get_layer(name).output for name in layer_names]
        if not inputs:
            raise ValueError("no inputs")
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Cannot take the outputs of layers of the {role} "
            f"{model.name!r}: it is a subclassed model (or was never "
            "called on symbolic inputs), so its layers' outputs are not "
            "part of a graph. Build it with the functional API or "
            f"keras.Sequential with an Input. ({error})"
        ) from None
    if len(inputs) == 1:
        inputs = inputs[0]  # A single input keeps its structure for calls.
    return keras.Model(
        inputs, [model.outputs[0], *outputs], name=f"{model.name}_features"
    )


def plan_feature_losses(student, teacher, feature_losses):
    """Checks feature losses against two models; returns what they need.

    Every layer a loss names must exist in its model and the shapes of each
    pair must be comparable by the loss (`FeatureLoss.check_shapes`).

    Args:
        student: The student model.
        teacher: The teacher model.
        feature_losses: `kdtrain.losses.FeatureLoss` instances.

    Returns:
        `(models, student_names, teacher_names, adapters)`: the two feature
        extractors (`feature_model`), the layer names each returns, and
        per pair that needs an adapter `(loss, pair, student_shape,
        teacher_shape)`.

    Raises:
        ValueError: A missing layer (listing the model's layers) or pairs
            of incompatible shapes.
    """
    student_names = list(dict.fromkeys(
        pair[0] for loss in feature_losses for pair in loss.layers
    ))
    teacher_names = list(dict.fromkeys(
        pair[1] for loss in feature_losses for pair in loss.layers
    ))
    models = (
        feature_model(student, student_names, "student"),
        feature_model(teacher, teacher_names, "teacher"),
    )
    shapes = [
        dict(zip(names, (tuple(t.shape) for t in model.outputs[1:])))
        for names, model in zip((student_names, teacher_names), models)
    ]
    adapters = []
    for loss in feature_losses:
        for pair in loss.layers:
            student_shape, teacher_shape = shapes[0][pair[0]], shapes[1][pair[1]]
            loss.check_shapes(student_shape, teacher_shape, pair)
            if loss.needs_adapter:
                adapters.append((loss, pair, student_shape, teacher_shape))
    return models, student_names, teacher_names, adapters
