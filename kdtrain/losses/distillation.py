"""Distillation losses: how far the student's outputs are from the teacher's.

Every loss here receives logits. For a model with probability outputs (a
final softmax or sigmoid) the `Distiller` passes the exact pre-activation
logits where the model's graph shows them (`kdtrain.outputs.logits_model`),
and otherwise inverts the probabilities (`kdtrain.outputs.to_logits`), so
temperature scaling stays exact for probability heads too.

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


def safe_sqrt(x):
    """`sqrt(x)` for `x >= 0` whose gradient at 0 is 0, not infinite."""
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, 1.0)), 0.0)


def standardize_logits(logits, epsilon=1e-7):
    """Z-scores each sample's logits (logit standardization, Sun et al. 2024).

    `(z - mean(z)) / (std(z) + epsilon)` over the classes, with the
    unbiased (n - 1) standard deviation and `epsilon=1e-7`, as the authors'
    code computes it (`torch.std`; "Logit Standardization in Knowledge
    Distillation", CVPR 2024). A single unit, a binary classifier's logit
    `z`, first becomes the two logits `(z, 0)` of the same distribution.

    Args:
        logits: Tensor of shape `(batch, classes)`.
        epsilon: Added to the standard deviation, so that equal logits give
            zeros rather than a division by zero.

    Returns:
        Standardized logits of shape `(batch, classes)`, or `(batch, 2)` for
        a single unit.

    Example:

    >>> z = kdtrain.losses.standardize_logits([[1.0, 2.0, 3.0]])
    >>> keras.ops.convert_to_numpy(z).round(3).tolist()
    [[-1.0, 0.0, 1.0]]
    """
    logits = ops.convert_to_tensor(logits, "float32")
    if logits.shape[-1] == 1:
        logits = ops.concatenate([logits, ops.zeros_like(logits)], axis=-1)
    centered = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centered), axis=-1, keepdims=True) / (
        logits.shape[-1] - 1
    )
    return centered / (safe_sqrt(variance) + epsilon)


@keras.saving.register_keras_serializable(package="kdtrain")
class DistillationLoss(keras.losses.Loss):
    """Base class of the distillation losses.

    A new kind of distillation is a subclass that implements
    `call(self, teacher_logits, student_logits)` and returns one loss value
    per sample, shape `(batch,)`. Reduction over the batch, sample weights,
    the mix with the ground-truth loss and scaling under a `tf.distribute`
    strategy are the `Distiller`'s job. A loss whose values depend on the
    whole batch (as CWTM's weights do) sums such quantities over the
    replicas with `kdtrain.distribute.replica_sum`.

    A loss that also needs the labels declares a `labels` argument:
    `call(self, teacher_logits, student_logits, labels)`. The `Distiller` then
    passes the labels as a float distribution of the logits' shape: one-hot
    rows for integer or one-hot labels, the 0/1 target for a single unit.
    A loss that weighs samples itself (as `CorrelationKD`'s batch statistics
    do) declares a `sample_weight` argument; the `Distiller` then passes the
    sample weights, or None, and still applies them to the values returned.

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

    @property
    def uses_sample_weight(self):
        """Whether `call` takes the sample weights (`sample_weight`)."""
        return "sample_weight" in inspect.signature(self.call).parameters


class _TemperatureLoss(DistillationLoss):
    """A distillation loss between temperature-softened distributions."""

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        self.temperature = validate_temperature(temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


class _StandardizableLoss(_TemperatureLoss):
    """A temperature loss that can z-score the logits first (Sun et al.)."""

    def __init__(self, temperature, standardize=False, **kwargs):
        super().__init__(temperature=temperature, **kwargs)
        self.standardize = validation.choice(
            "standardize", standardize, (False, True)
        )

    def log_distributions(self, teacher_logits, student_logits):
        """Both sides' softened log-probabilities, standardized if asked."""
        if self.standardize:
            teacher_logits = standardize_logits(teacher_logits)
            student_logits = standardize_logits(student_logits)
        return (log_distribution(teacher_logits, self.temperature),
                log_distribution(student_logits, self.temperature))

    def get_config(self):
        return {**super().get_config(), "standardize": self.standardize}


@keras.saving.register_keras_serializable(package="kdtrain")
class SoftTargets(_StandardizableLoss):
    """Crossentropy from the teacher's softened distribution to the student's.

    `-sum(softmax(t / T) * log_softmax(s / T))` per sample, without a T²
    factor. With `temperature=1` the student learns the teacher's softmax
    outputs as targets (the Born-Again Networks objective); with a higher
    temperature it learns softened logits. Mixed with the labels (taken at
    T=1), its term therefore weighs 1/T² of Hinton et al.'s, whose
    T²-scaled loss is `KLDivergence`.

    With `standardize=True` each sample's logits are z-scored before the
    softening, as in `KLDivergence` (see there).

    Args:
        temperature: Softening temperature, finite and > 0. Defaults to 1.
        standardize: Whether to z-score each side's logits first (logit
            standardization, Sun et al. 2024). Defaults to False.
        name: Name of the loss instance.

    Example:

    ```python
    loss = kdtrain.losses.SoftTargets(temperature=3.0)
    loss(teacher_logits, student_logits)  # mean over the batch
    ```
    """

    def __init__(self, temperature=1.0, standardize=False, **kwargs):
        super().__init__(temperature=temperature, standardize=standardize,
                         **kwargs)

    def call(self, teacher_logits, student_logits):
        log_teacher, log_student = self.log_distributions(
            teacher_logits, student_logits
        )
        return -ops.sum(ops.exp(log_teacher) * log_student, axis=-1)


@keras.saving.register_keras_serializable(package="kdtrain")
class KLDivergence(_StandardizableLoss):
    """KL divergence between softened distributions, times T² (Hinton 2015).

    `T² * sum(p_t * (log p_t - log p_s))` per sample with
    `p = softmax(logits / T)`. The T² factor keeps the gradients' size
    independent of the temperature, so the mix with the ground-truth loss
    means the same at any T.

    With `standardize=True` (logit standardization, Sun et al., "Logit
    Standardization in Knowledge Distillation", CVPR 2024) each side's
    logits are z-scored per sample before the softening:

    `p = softmax((z - mean(z)) / ((std(z) + 1e-7) * T))`,

    with the unbiased standard deviation over the classes, as the authors'
    code does (`standardize_logits`); the T² factor stays. The student then
    matches the teacher's logit relations, not their range: up to the
    1e-7, the loss is blind to any per-sample shift or positive scale of
    either side's logits. Here T is the paper's base temperature, applied after the
    z-score. A binary (one-unit) output has two logits `(z, 0)`, whose
    z-scores are `±1/√2` whatever `|z|`: only the predicted class remains.

    Args:
        temperature: Softening temperature, finite and > 0. Defaults to 4.
        standardize: Whether to z-score each side's logits first. Defaults
            to False.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(distillation_loss=kdtrain.losses.KLDivergence(3.0))
    distiller.compile(
        distillation_loss=kdtrain.losses.KLDivergence(2.0, standardize=True))
    ```
    """

    def __init__(self, temperature=4.0, standardize=False, **kwargs):
        super().__init__(temperature=temperature, standardize=standardize,
                         **kwargs)

    def call(self, teacher_logits, student_logits):
        log_teacher, log_student = self.log_distributions(
            teacher_logits, student_logits
        )
        kl = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), -1)
        return kl * (self.temperature**2)


@keras.saving.register_keras_serializable(package="kdtrain")
class LogitsMSE(DistillationLoss):
    """Mean squared error between the logits (Ba & Caruana 2014).

    `mean((t - s)²)` over the classes, per sample. Logits carry the
    teacher's knowledge about unlikely classes that a softmax squashes
    towards zero. Both sides' logits are exact where a `Distiller` can read
    them: a logits model's, a functional or Sequential softmax head's
    pre-activation logits, and a teacher-output cache's rows, whose
    offsets are added back. Only a softmax head whose graph hides them (a
    subclassed model) gives its log-probabilities, its logits up to a
    per-sample shift; `center=True` subtracts each sample's mean logit
    from both sides first, which makes the loss blind to any such shift
    (the zero-mean logits of Hinton et al.).

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
