"""Feature distillation: losses between intermediate outputs of two models."""

import keras
from keras import ops

from kdtrain.losses.distillation import validate_positive


def layer_pairs(layers):
    """Normalizes a layer specification to (student, teacher) name pairs.

    Args:
        layers: A layer name, or a list of items that are each a layer name
            (the same name in the student and the teacher) or a
            `(student_layer, teacher_layer)` pair.

    Returns:
        A tuple of `(student_layer, teacher_layer)` tuples.
    """
    items = [layers] if isinstance(layers, str) else layers
    pairs = []
    for item in items if isinstance(items, (list, tuple)) else [items]:
        if isinstance(item, str):
            pairs.append((item, item))
        elif (
            isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(name, str) for name in item)
        ):
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(
                "`layers` takes layer names (the same name in the student "
                "and the teacher) or (student_layer, teacher_layer) pairs. "
                f"Received: layers={layers!r}"
            )
    if not pairs:
        raise ValueError("`layers` must name at least one layer.")
    return tuple(pairs)


@keras.saving.register_keras_serializable(package="kdtrain")
class FeatureLoss(keras.losses.Loss):
    """Base class of losses between intermediate outputs of the two models.

    A feature loss names pairs of layers, one in the student and one in the
    teacher, and compares their outputs. The `Distiller` takes the outputs
    of those layers in the same forward passes as the logits, calls
    `call(teacher_features, student_features)` once per pair (each returning
    one value per sample), sums the pairs and adds `weight` times their
    batch mean to the total loss, logged under the loss's `name`.

    Args:
        layers: A layer name, or a list of layer names (the same name in
            both models) and `(student_layer, teacher_layer)` pairs.
        weight: Finite number > 0 multiplying the loss in the total.
        name: Name of the loss instance and of its logged value.
    """

    #: Whether the student's features pass through a learned adapter.
    needs_adapter = False

    def __init__(self, layers, weight=1.0, name=None, dtype=None):
        super().__init__(name=name, reduction="sum_over_batch_size",
                         dtype=dtype or "float32")
        self.layers = layer_pairs(layers)
        self.weight = validate_positive("weight", weight)

    def check_shapes(self, student_shape, teacher_shape, pair):
        """Raises a ValueError if the pair's feature shapes cannot be compared.

        Args:
            student_shape: The student layer's output shape (with batch).
            teacher_shape: The teacher layer's output shape (with batch).
            pair: The `(student_layer, teacher_layer)` names.
        """

    def call(self, teacher_features, student_features):
        raise NotImplementedError(
            f"{type(self).__name__} must implement "
            "`call(self, teacher_features, student_features)` returning one "
            "loss value per sample."
        )

    def get_config(self):
        config = super().get_config()
        config.pop("reduction", None)  # Fixed: the Distiller reduces.
        return {
            **config,
            "layers": [list(pair) for pair in self.layers],
            "weight": self.weight,
        }


def attention_map(features, p=2.0):
    """The normalized spatial attention map of Zagoruyko & Komodakis 2017.

    Args:
        features: Tensor `(batch, *spatial, channels)`.
        p: The power of the activations' magnitude.

    Returns:
        `(batch, positions)`: the channel mean of `|features| ** p` at each
        position, divided by its L2 norm over the positions.
    """
    features = ops.cast(features, "float32")
    energy = ops.mean(ops.power(ops.abs(features), p), axis=-1)
    energy = ops.reshape(energy, (ops.shape(energy)[0], -1))
    return ops.normalize(energy, axis=-1, order=2)


@keras.saving.register_keras_serializable(package="kdtrain")
class AttentionTransfer(FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017).

    For each layer pair, the student's normalized spatial attention map (the
    channel mean of `|activation| ** p`, L2-normalized over the positions)
    is matched to the teacher's: the loss of a sample is half the mean
    squared difference of the two maps over the positions, summed over the
    pairs, so `weight` is the paper's β (its code adds
    `β / 2 · mean((a_s − a_t)²)` per pair, with β = 1000 and p = 2). The
    layers of a pair must have the same spatial size; their channel counts
    may differ.

    Args:
        layers: Layer names or `(student_layer, teacher_layer)` pairs; for
            Wide ResNets, `("group_1", "group_2", "group_3")`.
        p: The power in the attention map, finite and > 0. Defaults to 2.
        weight: The weight of the loss in the total. Defaults to 1000.
        name: Name of the loss and of its logged value.

    Example:

    ```python
    distiller.compile(
        distillation_loss="kl",
        feature_losses=[kdtrain.losses.AttentionTransfer(
            ["group_1", "group_2", "group_3"], p=2, weight=1000)],
    )
    ```
    """

    def __init__(self, layers, p=2.0, weight=1000.0, name="attention_transfer",
                 **kwargs):
        super().__init__(layers, weight=weight, name=name, **kwargs)
        self.p = validate_positive("p", p)

    def check_shapes(self, student_shape, teacher_shape, pair):
        if len(student_shape) < 3 or len(teacher_shape) < 3:
            raise ValueError(
                f"Attention transfer needs spatial feature maps; the layers "
                f"{pair[0]!r} (student, {tuple(student_shape)}) and "
                f"{pair[1]!r} (teacher, {tuple(teacher_shape)}) have none."
            )
        if tuple(student_shape[1:-1]) != tuple(teacher_shape[1:-1]):
            raise ValueError(
                "Attention transfer compares maps of the same spatial size; "
                f"the student layer {pair[0]!r} is "
                f"{tuple(student_shape[1:-1])} and the teacher layer "
                f"{pair[1]!r} is {tuple(teacher_shape[1:-1])}."
            )

    def call(self, teacher_features, student_features):
        difference = attention_map(student_features, self.p) - attention_map(
            ops.stop_gradient(teacher_features), self.p
        )
        return 0.5 * ops.mean(ops.square(difference), axis=-1)

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable(package="kdtrain")
class HintLoss(FeatureLoss):
    """FitNets hints (Romero et al. 2015): regress teacher features.

    The student layer's output passes through a learned adapter, a 1x1
    convolution for feature maps or a dense layer for vectors, that maps its
    channels to the teacher layer's; the loss of a sample is the mean
    squared difference to the teacher layer's output. The `Distiller` owns
    the adapters: they train with the student and are not part of the
    exported student. Spatial sizes must match. The hint trains jointly with
    the output loss from the first step, not stage-wise (hint first, then
    the outputs) as in the paper.

    Args:
        layers: Layer names or `(student_layer, teacher_layer)` pairs.
        weight: The weight of the loss in the total. Defaults to 1.
        name: Name of the loss and of its logged value.

    Example:

    ```python
    distiller.compile(
        distillation_loss=None,
        feature_losses=[kdtrain.losses.HintLoss([("block_4", "group_2")])],
    )
    ```
    """

    needs_adapter = True

    def __init__(self, layers, weight=1.0, name="hint", **kwargs):
        super().__init__(layers, weight=weight, name=name, **kwargs)

    def check_shapes(self, student_shape, teacher_shape, pair):
        if len(student_shape) != len(teacher_shape) or tuple(
            student_shape[1:-1]
        ) != tuple(teacher_shape[1:-1]):
            raise ValueError(
                "A hint adapter maps channels only (a 1x1 convolution or a "
                f"dense layer): it cannot map the student layer {pair[0]!r} "
                f"of shape {tuple(student_shape)} to the teacher layer "
                f"{pair[1]!r} of shape {tuple(teacher_shape)}."
            )

    def adapter(self, student_shape, teacher_shape, name):
        """A fresh layer mapping the student's channels to the teacher's."""
        channels = teacher_shape[-1]
        if len(teacher_shape) == 4:
            return keras.layers.Conv2D(channels, 1, name=name)
        if len(teacher_shape) == 2:
            return keras.layers.Dense(channels, name=name)
        raise ValueError(
            "Hint adapters exist for feature maps (batch, height, width, "
            f"channels) and vectors (batch, units); {name!r} has shape "
            f"{tuple(teacher_shape)}."
        )

    def call(self, teacher_features, student_features):
        difference = ops.cast(student_features, "float32") - ops.stop_gradient(
            ops.cast(teacher_features, "float32")
        )
        axes = tuple(range(1, len(difference.shape)))
        return ops.mean(ops.square(difference), axis=axes)
