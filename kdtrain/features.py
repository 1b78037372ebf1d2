"""Intermediate outputs of a model, taken without rebuilding it by hand."""

import keras

from kdtrain.losses.features import FeatureLoss
from kdtrain.losses.reduction import per_sample
from kdtrain.losses.reduction import weighted_mean


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


def prepare_feature_losses(student, teacher, feature_losses):
    """What a `Distiller` needs for its feature losses.

    Returns:
        `(trackers, adapters, extractors)`: a `keras.metrics.Mean` per loss,
        the built hint adapters, and `(models, student_names,
        teacher_names)` of `plan_feature_losses` (None without losses).

    Raises:
        ValueError: Not `FeatureLoss` instances, missing layers, or
            incompatible shapes.
    """
    for loss in feature_losses:
        if not isinstance(loss, FeatureLoss):
            raise ValueError(
                "`feature_losses` takes kdtrain.losses.FeatureLoss "
                "instances (AttentionTransfer, HintLoss). "
                f"Received: {loss!r}"
            )
    trackers = [keras.metrics.Mean(name=loss.name) for loss in feature_losses]
    if not feature_losses:
        return trackers, [], None
    models, student_names, teacher_names, needed = plan_feature_losses(
        student, teacher, feature_losses
    )
    return trackers, build_adapters(needed), (
        models, student_names, teacher_names
    )


def build_adapters(needed):
    """The built adapters (hints) of `plan_feature_losses`' pairs."""
    adapters = []
    for loss, pair, student_shape, teacher_shape in needed:
        adapter = loss.adapter(
            student_shape, teacher_shape,
            f"{loss.name}_adapter_{pair[0]}_to_{pair[1]}",
        )
        adapter.build(student_shape)
        adapters.append(adapter)
    return adapters


def feature_loss(feature_losses, trackers, adapters, teacher, student,
                 sample_weight):
    """The weighted sum of the feature losses of one batch.

    Args:
        feature_losses: The `FeatureLoss` instances.
        trackers: One `keras.metrics.Mean` per loss, updated here.
        adapters: The adapters of `build_adapters`, in order.
        teacher: The teacher's features by layer name.
        student: The student's features by layer name.
        sample_weight: Optional per-sample weights.

    Returns:
        The scalar sum of `weight * batch mean` over the losses.
    """
    adapters = iter(adapters)
    total = 0.0
    for loss, tracker in zip(feature_losses, trackers):
        values = 0.0
        for student_layer, teacher_layer in loss.layers:
            features = student[student_layer]
            if loss.needs_adapter:
                features = next(adapters)(features)
            values = values + per_sample(
                loss.call(teacher[teacher_layer], features)
            )
        value = weighted_mean(values, sample_weight)
        tracker.update_state(value, sample_weight=keras.ops.shape(values)[0])
        total = total + loss.weight * value
    return total
