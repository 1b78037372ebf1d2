"""Distillation losses: how far the student's outputs are from the teacher's.

Every loss here receives logits. The `Distiller` turns probability outputs
(a final softmax or sigmoid) into log-probabilities first, which are logits up
to a constant, so temperature scaling stays exact for probability heads too.

A one-unit output is a binary classifier: its logit `z` stands for the
two-class distribution `(sigmoid(z), 1 - sigmoid(z))`, softened as
`sigmoid(z / T)`. The losses expand it to that distribution, so one formula
serves binary and multi-class outputs.
"""

import inspect
import math

import keras
from keras import ops

__all__ = [
    "DistillationLoss",
    "SoftTargets",
    "KLDivergence",
    "LogitsMSE",
    "ConfidenceWeighted",
    "PermutedPredictions",
    "get",
    "ALIASES",
]


def validate_positive(name, value):
    """Returns `value` as a float, or raises if it is not finite and > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"`{name}` must be a finite number greater than 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def validate_temperature(temperature):
    """Returns `temperature` as a float, or raises if it is not finite and > 0."""
    return validate_positive("temperature", temperature)


def log_distribution(logits, temperature=1.0):
    """Log-probabilities of the distribution that `logits` stand for.

    Args:
        logits: Tensor of shape `(batch, classes)`; a single unit
            (`classes == 1`) is the logit of a Bernoulli distribution.
        temperature: Softening temperature; logits are divided by it.

    Returns:
        Log-probabilities of shape `(batch, classes)`, or `(batch, 2)` for
        a single unit (the positive class first).
    """
    logits = ops.divide(logits, temperature)
    if logits.shape[-1] == 1:
        return ops.concatenate(
            [ops.log_sigmoid(logits), ops.log_sigmoid(-logits)], axis=-1
        )
    return ops.log_softmax(logits, axis=-1)


@keras.saving.register_keras_serializable(package="kdtrain")
class DistillationLoss(keras.losses.Loss):
    """Base class of the distillation losses.

    A new kind of distillation is a subclass that implements
    `call(self, teacher_logits, student_logits)` and returns one loss value
    per sample, shape `(batch,)`. Reduction over the batch, sample weights,
    the mix with the ground-truth loss and scaling under a `tf.distribute`
    strategy are the `Distiller`'s job.

    A loss that also needs the labels declares a `labels` argument:
    `call(self, teacher_logits, student_logits, labels)`. The `Distiller` then
    passes the labels as a float distribution of the logits' shape: one-hot
    rows for integer or one-hot labels, the 0/1 target for a single unit.

    Outside a `Distiller`, an instance of a loss without labels is an
    ordinary Keras loss with `y_true=teacher_logits` and
    `y_pred=student_logits`.

    Args:
        name: Name of the loss instance.
        reduction: Reduction used when the loss is called directly;
            defaults to `"sum_over_batch_size"`.
        dtype: Dtype of the loss computations; defaults to `"float32"`
            whatever the global dtype policy, so mixed precision training
            still computes losses in float32.

    Example:

    ```python
    class CosineLogits(kdtrain.losses.DistillationLoss):
        def call(self, teacher_logits, student_logits):
            t = keras.ops.normalize(teacher_logits, axis=-1)
            s = keras.ops.normalize(student_logits, axis=-1)
            return 1.0 - keras.ops.sum(t * s, axis=-1)

    distiller.compile(optimizer="adam", distillation_loss=CosineLogits())
    ```
    """

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        super().__init__(
            name=name, reduction=reduction, dtype=dtype or "float32"
        )

    def call(self, teacher_logits, student_logits):
        raise NotImplementedError(
            f"{type(self).__name__} must implement "
            "`call(self, teacher_logits, student_logits)` returning one loss "
            "value per sample."
        )

    @property
    def uses_labels(self):
        """Whether `call` takes the labels (a `labels` argument)."""
        return "labels" in inspect.signature(self.call).parameters


class _TemperatureLoss(DistillationLoss):
    """A distillation loss between temperature-softened distributions."""

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        self.temperature = validate_temperature(temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="kdtrain")
class SoftTargets(_TemperatureLoss):
    """Crossentropy from the teacher's softened distribution to the student's.

    `-sum(softmax(t / T) * log_softmax(s / T))` per sample, without a T²
    factor. With `temperature=1` the student learns the teacher's softmax
    outputs as targets (the Born-Again Networks objective); with a higher
    temperature it learns softened logits.

    Args:
        temperature: Softening temperature, finite and > 0. Defaults to 1.
        name: Name of the loss instance.

    Example:

    ```python
    loss = kdtrain.losses.SoftTargets(temperature=3.0)
    loss(teacher_logits, student_logits)  # mean over the batch
    ```
    """

    def __init__(self, temperature=1.0, **kwargs):
        super().__init__(temperature=temperature, **kwargs)

    def call(self, teacher_logits, student_logits):
        teacher = ops.exp(log_distribution(teacher_logits, self.temperature))
        student = log_distribution(student_logits, self.temperature)
        return -ops.sum(teacher * student, axis=-1)


@keras.saving.register_keras_serializable(package="kdtrain")
class KLDivergence(_TemperatureLoss):
    """KL divergence between softened distributions, times T² (Hinton 2015).

    `T² * sum(p_t * (log p_t - log p_s))` per sample with
    `p = softmax(logits / T)`. The T² factor keeps the gradients' size
    independent of the temperature, so the mix with the ground-truth loss
    means the same at any T.

    Args:
        temperature: Softening temperature, finite and > 0. Defaults to 4.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(distillation_loss=kdtrain.losses.KLDivergence(3.0))
    ```
    """

    def __init__(self, temperature=4.0, **kwargs):
        super().__init__(temperature=temperature, **kwargs)

    def call(self, teacher_logits, student_logits):
        log_teacher = log_distribution(teacher_logits, self.temperature)
        log_student = log_distribution(student_logits, self.temperature)
        kl = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), -1)
        return kl * (self.temperature**2)


@keras.saving.register_keras_serializable(package="kdtrain")
class LogitsMSE(DistillationLoss):
    """Mean squared error between the logits (Ba & Caruana 2014).

    `mean((t - s)²)` over the classes, per sample. Logits carry the
    teacher's knowledge about unlikely classes that a softmax squashes
    towards zero. A softmax-headed model's logits are known only up to a
    per-sample shift (its log-probabilities reach this loss); `center=True`
    subtracts each sample's mean logit from both sides first, which makes
    the loss blind to that shift (the zero-mean logits of Hinton et al.).

    Args:
        center: Whether to match zero-mean logits. Defaults to False, the
            loss of Ba & Caruana.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(distillation_loss="logits_mse")
    ```
    """

    def __init__(self, center=False, **kwargs):
        super().__init__(**kwargs)
        self.center = bool(center)

    def call(self, teacher_logits, student_logits):
        difference = student_logits - teacher_logits
        if self.center:
            difference = difference - ops.mean(difference, -1, keepdims=True)
        return ops.mean(ops.square(difference), axis=-1)

    def get_config(self):
        return {**super().get_config(), "center": self.center}


ALIASES = {
    "soft_targets": SoftTargets,
    "kl": KLDivergence,
    "logits_mse": LogitsMSE,
}


def get(identifier, **kwargs):
    """Returns a `DistillationLoss` from a name, a config or an instance.

    Args:
        identifier: A `DistillationLoss` instance (returned as is), one of
            the names in `ALIASES` (`"soft_targets"`, `"kl"`,
            `"logits_mse"`), or a serialized loss config.
        **kwargs: Constructor arguments for a named loss, e.g.
            `temperature=3.0`.

    Returns:
        A `DistillationLoss` instance.

    Example:

    >>> kdtrain.losses.get("kl", temperature=2.0).temperature
    2.0
    """
    if isinstance(identifier, DistillationLoss):
        if kwargs:
            raise ValueError(
                "Constructor arguments go with a loss name, not with a loss "
                f"instance. Received: identifier={identifier!r}, "
                f"kwargs={kwargs!r}"
            )
        return identifier
    if isinstance(identifier, str):
        if identifier not in ALIASES:
            raise ValueError(
                f"Unknown distillation loss: {identifier!r}. Valid names: "
                f"{', '.join(repr(name) for name in ALIASES)}; or pass a "
                "kdtrain.losses.DistillationLoss instance."
            )
        loss_class = ALIASES[identifier]
        if "temperature" in kwargs and kwargs["temperature"] is None:
            kwargs.pop("temperature")
        if "temperature" in kwargs and not issubclass(
            loss_class, _TemperatureLoss
        ):
            raise ValueError(
                f"The distillation loss {identifier!r} has no temperature. "
                f"Received: temperature={kwargs['temperature']!r}"
            )
        return loss_class(**kwargs)
    if isinstance(identifier, dict):
        loss = keras.saving.deserialize_keras_object(identifier)
        if isinstance(loss, DistillationLoss):
            return loss
    raise ValueError(
        "`distillation_loss` must be a kdtrain.losses.DistillationLoss, one "
        f"of {', '.join(repr(name) for name in ALIASES)}, or a serialized "
        f"DistillationLoss. Received: distillation_loss={identifier!r}"
    )


# Born-Again Networks variants (Furlanello et al. 2018, section 3.2) ----------


def _label_distribution(labels):
    """Labels as rows of the `log_distribution` shape (two columns if binary)."""
    labels = ops.cast(labels, "float32")
    if labels.shape[-1] == 1:
        return ops.concatenate([labels, 1.0 - labels], axis=-1)
    return labels


@keras.saving.register_keras_serializable(package="kdtrain")
class ConfidenceWeighted(DistillationLoss):
    """Confidence-Weighted by Teacher Max (CWTM), a Born-Again variant.

    The student learns the labels, not the teacher's distribution: each
    sample's label crossentropy is weighted by the teacher's confidence, the
    largest of its class probabilities, normalized over the batch
    (Furlanello et al. 2018, eq. 4):

    `w_s = max_k p_teacher(k | x_s) / sum_u max_k p_teacher(k | x_u)`,

    and the batch loss is `sum_s w_s * CE(y_s, student_s)`. The per-sample
    value returned is `batch_size * w_s * CE_s`, so the `Distiller`'s mean
    over the batch is exactly that weighted sum. The weights are constants
    (no gradient flows through the teacher). The loss needs labels.

    Args:
        name: Name of the loss instance.

    Example:

    ```python
    runner = kdtrain.GenerationRunner(build_model, generations=3,
                                      distillation_loss="cwtm")
    ```
    """

    def call(self, teacher_logits, student_logits, labels):
        target = _label_distribution(labels)
        teacher = ops.exp(log_distribution(teacher_logits))
        confidence = ops.stop_gradient(ops.max(teacher, axis=-1))
        batch_size = ops.cast(ops.shape(confidence)[0], "float32")
        weights = ops.divide_no_nan(
            confidence * batch_size, ops.sum(confidence)
        )
        crossentropy = -ops.sum(
            target * log_distribution(student_logits), axis=-1
        )
        return weights * crossentropy


@keras.saving.register_keras_serializable(package="kdtrain")
class PermutedPredictions(_TemperatureLoss):
    """Dark Knowledge with Permuted Predictions (DKPP), a Born-Again variant.

    The teacher's (temperature-softened) distribution keeps its argmax
    entry in place while all its other entries are randomly permuted, anew
    for every sample and every step; the student learns this distribution
    with a crossentropy, as in `SoftTargets`. The permutation destroys the
    "dark knowledge" of which wrong classes look alike while keeping the
    teacher's confidence in its prediction. A binary (single unit) output
    has only one non-argmax entry, so there DKPP equals `SoftTargets`.

    The randomness comes from a `keras.random.SeedGenerator` owned by the
    loss, so a `seed` makes the permutations reproducible.

    Args:
        temperature: Softening temperature, finite and > 0. Defaults to 1.
        seed: Optional integer seed of the permutations.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(
        distillation_loss=kdtrain.losses.PermutedPredictions(seed=0))
    ```
    """

    def __init__(self, temperature=1.0, seed=None, **kwargs):
        super().__init__(temperature=temperature, **kwargs)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int)
        ):
            raise ValueError(
                f"`seed` must be an integer or None. Received: seed={seed!r}"
            )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def permute(self, distribution):
        """Permutes each row's non-argmax entries at random.

        Args:
            distribution: Tensor of shape `(batch, classes)`.

        Returns:
            A tensor of the same shape: each row keeps its argmax entry where
            it is; its other entries are a random permutation of the row's
            other entries.
        """
        classes = distribution.shape[-1]
        is_max = ops.one_hot(
            ops.argmax(distribution, axis=-1), classes, dtype="float32"
        )
        positions = ops.cast(ops.arange(classes), "float32")[None, :]
        # Argmax first, then the other positions in order: the sources.
        sources = ops.argsort(
            ops.where(is_max > 0, -1.0, positions + 0.0 * is_max), axis=-1
        )
        # Argmax first, then the other positions shuffled: the targets.
        noise = keras.random.uniform(
            ops.shape(distribution), seed=self.seed_generator
        )
        targets = ops.argsort(ops.where(is_max > 0, -1.0, noise), axis=-1)
        values = ops.take_along_axis(distribution, sources, axis=-1)
        return ops.take_along_axis(
            values, ops.argsort(targets, axis=-1), axis=-1
        )

    def call(self, teacher_logits, student_logits):
        teacher = ops.exp(log_distribution(teacher_logits, self.temperature))
        teacher = ops.stop_gradient(self.permute(teacher))
        student = log_distribution(student_logits, self.temperature)
        return -ops.sum(teacher * student, axis=-1)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


ALIASES["cwtm"] = ConfidenceWeighted
ALIASES["dkpp"] = PermutedPredictions


# Feature distillation ----------------------------------------------------------


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

    def __init__(self, layers, weight=1.0, name=None, reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction,
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
        return {
            **super().get_config(),
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
    exported student. Spatial sizes must match.

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


__all__ += ["FeatureLoss", "AttentionTransfer", "HintLoss", "attention_map"]
