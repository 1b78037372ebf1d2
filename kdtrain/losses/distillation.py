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

import keras
from keras import ops

from kdtrain import validation


def validate_positive(name, value):
    """Returns `value` as a float, or raises if it is not finite and > 0."""
    return validation.number(name, value, 0.0, exclusive_minimum=True)


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

    Called directly, it averages over the batch
    (`"sum_over_batch_size"`), as Keras losses do by default.

    Args:
        name: Name of the loss instance.
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

    def __init__(self, name=None, dtype=None):
        super().__init__(
            name=name, reduction="sum_over_batch_size",
            dtype=dtype or "float32",
        )

    def get_config(self):
        config = super().get_config()
        config.pop("reduction", None)  # Fixed: the Distiller reduces.
        return config

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
