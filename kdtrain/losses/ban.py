"""The Born-Again Networks variants (Furlanello et al. 2018, section 3.2)."""

import keras
from keras import ops

from kdtrain import validation
from kdtrain.distribute import replica_sum
from kdtrain.losses.distillation import DistillationLoss
from kdtrain.losses.distillation import _TemperatureLoss
from kdtrain.losses.distillation import log_distribution


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

    Under a `tf.distribute` strategy the batch is the global batch: the sum
    in the denominator and `batch_size` are summed over the replicas, so
    the weights are the ones a single device computes.

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
        # Eq. 4 normalizes over the whole batch, so over all the replicas.
        batch_size = replica_sum(ops.cast(ops.shape(confidence)[0], "float32"))
        weights = ops.divide_no_nan(
            confidence * batch_size, replica_sum(ops.sum(confidence))
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
        self.seed = validation.integer("seed", seed, allow_none=True)
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
