"""DIST: matching the relations between predictions by Pearson correlation."""

import keras
from keras import ops

from kdtrain.distribute import replica_sum
from kdtrain.losses.decoupled import validate_weight
from kdtrain.losses.distillation import _TemperatureLoss
from kdtrain.losses.distillation import log_distribution
from kdtrain.losses.distillation import safe_sqrt
from kdtrain.losses.reduction import weighted_mean

EPSILON = 1e-8  # The reference code's, added to the product of the norms.


def _pearson(covariance, variance_a, variance_b):
    """Pearson correlation from centered sums, with the reference's epsilon."""
    return covariance / (safe_sqrt(variance_a) * safe_sqrt(variance_b)
                         + EPSILON)


@keras.saving.register_keras_serializable(package="kdtrain")
class CorrelationKD(_TemperatureLoss):
    """DIST: distillation from a stronger teacher (Huang et al., NeurIPS 2022).

    "Knowledge Distillation from A Stronger Teacher" replaces the KL
    divergence by a correlation between the softened predictions
    `P_s = softmax(s / τ)` and `P_t = softmax(t / τ)`, a batch of shape
    `(B, C)`, in two directions:

    `DIST = τ² · (β · inter + γ · intra)`, with

    - `inter = 1 - (1/B) sum_i ρ(P_s[i, :], P_t[i, :])`, the relations
      between the classes within each sample (its rows);
    - `intra = 1 - (1/C) sum_c ρ(P_s[:, c], P_t[:, c])`, the relations
      between the samples within each class (the batch's columns);

    `ρ(a, b) = <a - ā, b - b̄> / (‖a - ā‖ · ‖b - b̄‖ + 1e-8)` the Pearson
    correlation as the authors' code computes it (hunto/DIST_KD,
    `dist_kd.py`). The defaults `β = γ = τ = 1` are that code's.

    The intra-class term is a statistic of the batch, not a sum over
    samples. The loss returns, per sample, `τ² · (β · (1 - ρ_i) + γ · intra)`:
    its mean over the batch is DIST. Sample weights `w` act on both terms:
    on the rows as on any per-sample loss, and in the columns' Pearson
    correlations as weights of weighted means and sums (a sample of weight
    0 is left out of the columns, an integer weight counts the sample that
    many times). With Keras' reduction `sum(w · value) / B`, the result is
    `(sum(w) / B) · DIST` of the batch in which each sample appears `w`
    times.

    Under a `tf.distribute` strategy the columns span the global batch: the
    column sums are summed over the replicas (and gradients flow back
    through those sums), so the loss, its logs and its gradients are the
    ones of one device with the whole batch.

    Args:
        beta: Weight of the inter-class term, finite and >= 0. Defaults to 1.
        gamma: Weight of the intra-class term, finite and >= 0. Defaults
            to 1.
        temperature: The softening temperature τ, finite and > 0. Defaults
            to 1.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(optimizer="sgd", distillation_loss="dist")
    loss = kdtrain.losses.CorrelationKD(beta=2.0, gamma=2.0)
    loss(teacher_logits, student_logits, sample_weight=weights)
    ```
    """

    def __init__(self, beta=1.0, gamma=1.0, temperature=1.0, **kwargs):
        super().__init__(temperature=temperature, **kwargs)
        self.beta = validate_weight("beta", beta)
        self.gamma = validate_weight("gamma", gamma)

    def call(self, teacher_logits, student_logits, sample_weight=None):
        teacher = ops.exp(log_distribution(teacher_logits, self.temperature))
        student = ops.exp(log_distribution(student_logits, self.temperature))
        inter = 1.0 - self.inter_class_correlation(teacher, student)
        intra = 1.0 - self.intra_class_correlation(teacher, student,
                                                   sample_weight)
        scale = self.temperature**2
        return scale * (self.beta * inter + self.gamma * intra)

    @staticmethod
    def inter_class_correlation(teacher, student):
        """Each sample's Pearson correlation over the classes: `(batch,)`."""
        t = teacher - ops.mean(teacher, axis=-1, keepdims=True)
        s = student - ops.mean(student, axis=-1, keepdims=True)
        return _pearson(ops.sum(t * s, axis=-1),
                        ops.sum(t * t, axis=-1), ops.sum(s * s, axis=-1))

    @staticmethod
    def intra_class_correlation(teacher, student, sample_weight=None):
        """The mean over the classes of the weighted Pearson correlations of
        the columns, over the global batch: a scalar."""
        if sample_weight is None:
            weights = ops.ones_like(teacher[:, :1])
        else:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        classes = teacher.shape[-1]
        # Two passes, as the reference centers before it multiplies; each
        # pass is one sum over the replicas.
        sums = replica_sum(ops.concatenate(
            [ops.sum(weights, axis=0), ops.sum(weights * teacher, axis=0),
             ops.sum(weights * student, axis=0)], axis=0,
        ))
        total = sums[:1]
        t = teacher - ops.divide_no_nan(sums[1:1 + classes], total)
        s = student - ops.divide_no_nan(sums[1 + classes:], total)
        moments = replica_sum(ops.concatenate(
            [ops.sum(weights * t * s, axis=0),
             ops.sum(weights * t * t, axis=0),
             ops.sum(weights * s * s, axis=0)], axis=0,
        ))
        correlations = _pearson(moments[:classes],
                                moments[classes:2 * classes],
                                moments[2 * classes:])
        return ops.mean(correlations)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ applies the weights only to `call`'s values;
        # the columns' statistics need them too.
        with keras.name_scope(self.name):
            values = self.call(
                ops.convert_to_tensor(y_true, self.dtype),
                ops.convert_to_tensor(y_pred, self.dtype),
                sample_weight=sample_weight,
            )
            return weighted_mean(values, sample_weight)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta,
                "gamma": self.gamma}
