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


def validate_temperature(temperature):
    """Returns `temperature` as a float, or raises if it is not finite and > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            "`temperature` must be a finite number greater than 0. "
            f"Received: temperature={temperature!r}"
        )
    return float(temperature)


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

    Outside a `Distiller`, an instance is an ordinary Keras loss with
    `y_true=teacher_logits` and `y_pred=student_logits`.

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
    sample's label crossentropy is weighted by the teacher's confidence in
    the sample's true class, normalized over the batch,

    `w_s = p_teacher(y_s | x_s) / sum_u p_teacher(y_u | x_u)`,

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
        confidence = ops.stop_gradient(ops.sum(teacher * target, axis=-1))
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
