"""Losses that treat the target class apart from the others: DKD and NKD.

Both split the teacher's and the student's distributions at the label's
class: the target probability `p_y` on one side, and on the other the
normalized non-target distribution `p_k / (1 - p_y)` over the classes
`k != y`. Both need the labels; the target class is the one where a label
row is largest (the class of a one-hot row, or the positive class of a
binary 0/1 label above 0.5).

Both parts are computed from the logits in log space, never from a rounded
`p_y`, so the losses stay finite and precise when a distribution is nearly
one-hot (logits of ±50).
"""

import keras
from keras import ops

from kdtrain import validation
from kdtrain.losses.distillation import _TemperatureLoss


def target_mask(labels):
    """One-hot rows of each sample's target class.

    Args:
        labels: Labels as the `Distiller` passes them: float rows of the
            logits' shape (one-hot, or soft), or `(batch, 1)` 0/1 targets of
            a single-unit output.

    Returns:
        A float tensor of shape `(batch, classes)`, or `(batch, 2)` for a
        single unit (the positive class first, as `log_distribution`).
    """
    labels = ops.cast(labels, "float32")
    if labels.shape[-1] == 1:
        labels = ops.concatenate([labels, 1.0 - labels], axis=-1)
    return ops.one_hot(ops.argmax(labels, axis=-1), labels.shape[-1],
                       dtype="float32")


def split_at_target(logits, mask, temperature=1.0):
    """A softened distribution's target and non-target parts, in log space.

    Args:
        logits: Logits of shape `(batch, classes)`; a single unit is the
            logit `z` of a binary classifier, the two logits `(z, 0)`.
        mask: One-hot rows of the target classes (`target_mask`).
        temperature: Softening temperature; logits are divided by it.

    Returns:
        `(log_target, log_rest, log_non_target)`: `log p_y` and
        `log(1 - p_y)` of `p = softmax(logits / T)`, shape `(batch,)`, and
        the log-probabilities of the normalized non-target distribution
        `softmax` over the classes `k != y`, shape `(batch, classes)`, with
        0 at the target class (mask it out).
    """
    logits = ops.divide(ops.convert_to_tensor(logits, "float32"),
                        temperature)
    if logits.shape[-1] == 1:
        logits = ops.concatenate([logits, ops.zeros_like(logits)], axis=-1)
    target = ops.sum(mask * logits, axis=-1)
    # logsumexp over the non-target classes. The target entry becomes the
    # row's minimum, so the maximum is a non-target's and no exp overflows.
    others = ops.where(
        mask > 0, ops.min(logits, axis=-1, keepdims=True), logits
    )
    top = ops.stop_gradient(ops.max(others, axis=-1, keepdims=True))
    log_others = top + ops.log(
        ops.sum((1.0 - mask) * ops.exp(others - top), axis=-1, keepdims=True)
    )
    # From the gap between the two, both log p_y and log(1 - p_y) keep their
    # float32 precision even when p_y rounds to 0 or 1.
    gap = log_others[:, 0] - target
    # The target entry of the non-target part is 0, not log p_y / (1 - p_y),
    # whose exp may overflow, and inf * 0 (its mask) is nan.
    log_non_target = ops.where(mask > 0, 0.0, logits - log_others)
    return -ops.softplus(gap), -ops.softplus(-gap), log_non_target


def validate_weight(name, value):
    """Returns `value` as a float, or raises if it is not finite and >= 0."""
    return validation.number(name, value, 0.0)


@keras.saving.register_keras_serializable(package="kdtrain")
class DecoupledKD(_TemperatureLoss):
    """Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022).

    The KL divergence of Hinton et al. splits into a target-class term and
    a non-target term, `KD = TCKD + (1 - p_y) · NCKD` ("Decoupled Knowledge
    Distillation"); DKD weighs them independently instead:

    `DKD = T² · (α · TCKD + β · NCKD)`, per sample, with

    - `TCKD = KL([p_y, 1 - p_y] ‖ [q_y, 1 - q_y])`, the binary
      distributions of the target class,
    - `NCKD = KL(p̂ ‖ q̂)` between the normalized non-target distributions
      `p̂_k = p_k / (1 - p_y)`, `k != y`,

    where `p = softmax(t / T)` is the teacher's, `q = softmax(s / T)` the
    student's and `y` the label's class. This is the authors' reference code
    (mdistiller's `dkd_loss`), which removes the target class from the
    non-target softmax by subtracting 1000 from its logit; here it is removed
    exactly. With two classes (or one unit) there is no other non-target
    class, so NCKD is 0 and DKD is `α` times `KLDivergence`.

    The reference also ramps the DKD term up linearly over the first 20
    epochs (`min(epoch / 20, 1)`); that schedule is not part of this loss.
    The loss needs labels.

    Args:
        alpha: Weight of TCKD, finite and >= 0. Defaults to 1.
        beta: Weight of NCKD, finite and >= 0. Defaults to 8, the paper's
            CIFAR-100 setting.
        temperature: Softening temperature, finite and > 0. Defaults to 4.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(optimizer="sgd", distillation_loss="dkd",
                      ground_truth_weight=0.5)
    distiller.compile(distillation_loss=kdtrain.losses.DecoupledKD(beta=2.0))
    ```
    """

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, **kwargs):
        super().__init__(temperature=temperature, **kwargs)
        self.alpha = validate_weight("alpha", alpha)
        self.beta = validate_weight("beta", beta)

    def call(self, teacher_logits, student_logits, labels):
        mask = target_mask(labels)
        t_target, t_rest, t_others = split_at_target(
            teacher_logits, mask, self.temperature
        )
        s_target, s_rest, s_others = split_at_target(
            student_logits, mask, self.temperature
        )
        tckd = (ops.exp(t_target) * (t_target - s_target)
                + ops.exp(t_rest) * (t_rest - s_rest))
        nckd = ops.sum(
            (1.0 - mask) * ops.exp(t_others) * (t_others - s_others), axis=-1
        )
        return (self.alpha * tckd + self.beta * nckd) * self.temperature**2

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha,
                "beta": self.beta}


@keras.saving.register_keras_serializable(package="kdtrain")
class NormalizedKD(_TemperatureLoss):
    """Normalized knowledge distillation, NKD (Yang et al., ICCV 2023).

    "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
    Approach with Normalized Loss and Customized Soft Labels": the
    teacher's target probability weighs the student's target
    log-probability, and the student learns the teacher's normalized
    non-target distribution with a crossentropy:

    `NKD = -p_y · log q_y - γ · T² · sum_{k != y} p̂_k · log q̂_k`, per
    sample,

    where `p_y`, `q_y` are the teacher's and student's target probabilities
    at temperature 1, and `p̂ = softmax(t_k / T)`, `q̂ = softmax(s_k / T)`
    over the non-target classes `k != y` only (the authors' `NKDLoss`).
    With two classes (or one unit) the non-target term is 0. The loss needs
    labels.

    Args:
        gamma: Weight of the non-target term, finite and >= 0. Defaults to
            1.5, the authors' setting.
        temperature: Softening temperature of the non-target term, finite
            and > 0. Defaults to 1, the authors' setting; the target term
            is always at temperature 1.
        name: Name of the loss instance.

    Example:

    ```python
    distiller.compile(optimizer="sgd", distillation_loss="nkd",
                      ground_truth_weight=0.5)
    ```
    """

    def __init__(self, gamma=1.5, temperature=1.0, **kwargs):
        super().__init__(temperature=temperature, **kwargs)
        self.gamma = validate_weight("gamma", gamma)

    def call(self, teacher_logits, student_logits, labels):
        mask = target_mask(labels)
        t_target, _, t_others = split_at_target(teacher_logits, mask)
        s_target, _, s_others = split_at_target(student_logits, mask)
        if self.temperature != 1.0:
            _, _, t_others = split_at_target(teacher_logits, mask,
                                             self.temperature)
            _, _, s_others = split_at_target(student_logits, mask,
                                             self.temperature)
        target = -ops.exp(t_target) * s_target
        non_target = -ops.sum((1.0 - mask) * ops.exp(t_others) * s_others,
                              axis=-1)
        return target + self.gamma * self.temperature**2 * non_target

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}
