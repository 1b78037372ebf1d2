import keras
import numpy as np
import pytest

from kdtrain import losses

RNG = np.random.default_rng(0)
TEACHER = RNG.normal(scale=3.0, size=(6, 5)).astype("float32")
STUDENT = RNG.normal(scale=3.0, size=(6, 5)).astype("float32")


def np_softmax(z, t=1.0):
    z = z / t
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def per_sample(loss, teacher, student):
    return keras.ops.convert_to_numpy(loss.call(teacher, student))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_targets_is_crossentropy_of_softened_distributions(temperature):
    p = np_softmax(TEACHER, temperature)
    q = np_softmax(STUDENT, temperature)
    expected = -(p * np.log(q)).sum(axis=-1)
    loss = losses.SoftTargets(temperature)
    np.testing.assert_allclose(
        per_sample(loss, TEACHER, STUDENT), expected, rtol=1e-5
    )
    # Called as a Keras loss: the mean over the batch.
    np.testing.assert_allclose(
        float(loss(TEACHER, STUDENT)), expected.mean(), rtol=1e-5
    )


@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.0])
def test_kl_divergence_has_the_temperature_squared_factor(temperature):
    p = np_softmax(TEACHER, temperature)
    q = np_softmax(STUDENT, temperature)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=-1)
    loss = losses.KLDivergence(temperature=temperature)
    np.testing.assert_allclose(
        per_sample(loss, TEACHER, STUDENT), kl * temperature**2, rtol=1e-4
    )


def test_kl_divergence_on_a_fixed_example_is_kl_times_t_squared():
    # keras.distillation's LogitsDistillation(temperature=3) computes its
    # "kl_divergence" on logits / T as if they were probabilities and drops
    # T². The reference here is the softened KL times T²; the two faulty
    # variants, computed alike, are far from it, so the test tells them apart.
    teacher = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], "float32")
    student = np.array([[1.0, 2.0, 0.5], [1.5, 0.5, 1.0]], "float32")
    p, q = np_softmax(teacher, 3.0), np_softmax(student, 3.0)
    expected = 9.0 * (p * np.log(p / q)).sum(axis=-1).mean()
    got = float(losses.KLDivergence(temperature=3.0)(teacher, student))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    without_t_squared = expected / 9.0
    raw_t = np.clip(teacher / 3.0, 1e-7, 1.0)
    raw_s = np.clip(student / 3.0, 1e-7, 1.0)
    without_softmax = (raw_t * np.log(raw_t / raw_s)).sum(axis=-1).mean()
    assert abs(got - without_t_squared) > 0.1
    assert abs(got - without_softmax) > 0.05


def test_kl_divergence_is_zero_for_identical_logits():
    loss = losses.KLDivergence(temperature=2.0)
    np.testing.assert_allclose(
        per_sample(loss, TEACHER, TEACHER), np.zeros(6), atol=1e-5
    )


def test_logits_mse_is_the_mean_squared_difference():
    expected = ((TEACHER - STUDENT) ** 2).mean(axis=-1)
    np.testing.assert_allclose(
        per_sample(losses.LogitsMSE(), TEACHER, STUDENT), expected, rtol=1e-5
    )


def test_centered_logits_mse_ignores_a_per_sample_shift():
    centered = lambda z: z - z.mean(axis=-1, keepdims=True)  # noqa: E731
    expected = ((centered(TEACHER) - centered(STUDENT)) ** 2).mean(axis=-1)
    shifted = TEACHER + RNG.normal(size=(6, 1)).astype("float32") * 5
    loss = losses.LogitsMSE(center=True)
    np.testing.assert_allclose(
        per_sample(loss, shifted, STUDENT), expected, rtol=1e-4
    )
    assert not np.allclose(
        per_sample(losses.LogitsMSE(), shifted, STUDENT), expected, rtol=1e-2
    )


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_binary_losses_use_bernoulli_distributions(temperature):
    teacher = RNG.normal(scale=2.0, size=(8, 1)).astype("float32")
    student = RNG.normal(scale=2.0, size=(8, 1)).astype("float32")
    p = np_sigmoid(teacher[:, 0] / temperature)
    q = np_sigmoid(student[:, 0] / temperature)
    crossentropy = -(p * np.log(q) + (1 - p) * np.log(1 - q))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    np.testing.assert_allclose(
        per_sample(losses.SoftTargets(temperature), teacher, student),
        crossentropy,
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        per_sample(losses.KLDivergence(temperature), teacher, student),
        kl * temperature**2,
        rtol=1e-4,
        atol=1e-6,
    )


def test_aliases_and_get():
    assert isinstance(losses.get("soft_targets"), losses.SoftTargets)
    assert isinstance(losses.get("kl"), losses.KLDivergence)
    assert isinstance(losses.get("logits_mse"), losses.LogitsMSE)
    assert losses.get("kl", temperature=2.0).temperature == 2.0
    assert losses.get("kl").temperature == 4.0
    assert losses.get("soft_targets").temperature == 1.0
    instance = losses.SoftTargets(3.0)
    assert losses.get(instance) is instance


def test_unknown_loss_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'soft_targets', 'kl', 'logits_mse'"):
        losses.get("kld")


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        losses.KLDivergence(temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        losses.get("soft_targets", temperature=temperature)


def test_logits_mse_has_no_temperature():
    with pytest.raises(ValueError, match="no temperature"):
        losses.get("logits_mse", temperature=2.0)


@pytest.mark.parametrize(
    "loss",
    [losses.SoftTargets(2.0), losses.KLDivergence(3.0), losses.LogitsMSE(),
     losses.LogitsMSE(center=True)],
)
def test_losses_serialize_round_trip(loss):
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    np.testing.assert_allclose(
        per_sample(restored, TEACHER, STUDENT),
        per_sample(loss, TEACHER, STUDENT),
    )


def test_uses_labels_follows_the_call_signature():
    class WithLabels(losses.DistillationLoss):
        def call(self, teacher_logits, student_logits, labels):
            return keras.ops.sum(labels, axis=-1)

    assert WithLabels().uses_labels
    assert not losses.SoftTargets().uses_labels


def test_base_class_requires_call():
    with pytest.raises(NotImplementedError, match="call"):
        losses.DistillationLoss()(TEACHER, STUDENT)


# DKD, NKD, DIST and logit standardization ------------------------------------
#
# The references below are NumPy transcriptions of the authors' code, in
# float64: mdistiller's `dkd_loss` (Zhao et al. 2022), yzd-v/cls_KD's
# `NKDLoss` (Yang et al. 2023), hunto/DIST_KD's `DIST` (Huang et al. 2022)
# and logit-standardization-KD's `normalize` + `kd_loss` (Sun et al. 2024).
# Each returns one value per sample (the authors average them over the batch).


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def torch_kl_div(log_input, target):
    """torch's F.kl_div, elementwise: target · (log target − input), 0 at 0."""
    safe = np.where(target > 0, target, 1.0)
    return np.where(target > 0, target * (np.log(safe) - log_input), 0.0)


def ref_dkd(student, teacher, target, alpha=1.0, beta=8.0, temperature=4.0):
    n, c = student.shape
    gt_mask = np.zeros((n, c))
    gt_mask[np.arange(n), target] = 1.0
    other_mask = 1.0 - gt_mask

    def cat_mask(t):
        return np.stack([(t * gt_mask).sum(1), (t * other_mask).sum(1)], 1)

    pred_student = cat_mask(np_softmax(student, temperature))
    pred_teacher = cat_mask(np_softmax(teacher, temperature))
    tckd = torch_kl_div(np.log(pred_student), pred_teacher).sum(1)
    pred_teacher_part2 = np_softmax(teacher / temperature - 1000.0 * gt_mask)
    log_pred_student_part2 = np_log_softmax(
        student / temperature - 1000.0 * gt_mask
    )
    nckd = torch_kl_div(log_pred_student_part2, pred_teacher_part2).sum(1)
    return (alpha * tckd + beta * nckd) * temperature**2


def ref_nkd(student, teacher, label, gamma=1.5, temp=1.0):
    n, c = student.shape
    rows = np.arange(n)
    s_t = np_log_softmax(student)[rows, label]
    t_t = np_softmax(teacher)[rows, label]
    loss_t = -(t_t * s_t)
    mask = np.ones((n, c), bool)
    mask[rows, label] = False
    s_i = np_log_softmax(student[mask].reshape(n, -1) / temp)
    t_i = np_softmax(teacher[mask].reshape(n, -1) / temp)
    loss_non = -gamma * temp**2 * (t_i * s_i).sum(1)
    return loss_t + loss_non


def ref_pearson(a, b, eps=1e-8):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / (norms + eps)


def ref_dist(student, teacher, beta=1.0, gamma=1.0, tau=1.0):
    """DIST of the batch: a scalar (its intra-class term is not per sample)."""
    y_s, y_t = np_softmax(student, tau), np_softmax(teacher, tau)
    inter = 1.0 - ref_pearson(y_s, y_t).mean()
    intra = 1.0 - ref_pearson(y_s.T, y_t.T).mean()
    return tau**2 * (beta * inter + gamma * intra)


def ref_normalize(logit):
    mean = logit.mean(axis=-1, keepdims=True)
    stdv = logit.std(axis=-1, ddof=1, keepdims=True)  # torch.std: unbiased
    return (logit - mean) / (1e-7 + stdv)


def ref_kd_standardized(student, teacher, temperature):
    log_pred_student = np_log_softmax(ref_normalize(student) / temperature)
    pred_teacher = np_softmax(ref_normalize(teacher), temperature)
    kl = torch_kl_div(log_pred_student, pred_teacher).sum(1)
    return kl * temperature**2


def ref_soft_targets_standardized(student, teacher, temperature):
    log_pred_student = np_log_softmax(ref_normalize(student) / temperature)
    pred_teacher = np_softmax(ref_normalize(teacher), temperature)
    return -(pred_teacher * log_pred_student).sum(1)


def random_batch(batch, classes, seed):
    """Logits up to ±50, integer labels, integer weights with zeros."""
    rng = np.random.default_rng(seed)
    teacher = rng.uniform(-50, 50, (batch, classes)).astype("float32")
    student = rng.uniform(-50, 50, (batch, classes)).astype("float32")
    labels = rng.integers(0, classes, batch)
    weights = rng.integers(0, 4, batch).astype("float32")
    weights[0] = 2.0  # a batch of one counts
    if batch > 1:
        weights[1] = 0.0
    return teacher, student, labels, weights


def keras_reduction(values, weights):
    """Keras' "sum_over_batch_size": sum(w · value) / batch size."""
    return (weights * values).sum() / len(values)


def through_distiller(loss, teacher, student, labels, weights):
    """The batch loss a `Distiller` computes, from integer labels."""
    import kdtrain
    from conftest import mlp

    classes = teacher.shape[-1]
    distiller = kdtrain.Distiller(mlp(4, classes=classes, inputs=3, seed=0),
                                  mlp(4, classes=classes, inputs=3, seed=1))
    distiller.compile(optimizer="sgd", distillation_loss=loss,
                      ground_truth_weight=0.0)
    return float(distiller.compute_distillation_loss(
        labels, teacher, student, weights, student_logits=student
    ))


# Each new loss: a kdtrain instance, and its expected weighted batch loss.
EXACTNESS_CASES = {
    "dkd": (lambda: losses.DecoupledKD(),
            lambda s, t, y, w: keras_reduction(ref_dkd(s, t, y), w)),
    "dkd_alpha_beta_t8": (
        lambda: losses.DecoupledKD(alpha=0.5, beta=2.0, temperature=8.0),
        lambda s, t, y, w: keras_reduction(ref_dkd(s, t, y, 0.5, 2.0, 8.0), w),
    ),
    "nkd": (lambda: losses.NormalizedKD(),
            lambda s, t, y, w: keras_reduction(ref_nkd(s, t, y), w)),
    "nkd_gamma_t4": (
        lambda: losses.NormalizedKD(gamma=1.0, temperature=4.0),
        lambda s, t, y, w: keras_reduction(ref_nkd(s, t, y, 1.0, 4.0), w),
    ),
    # Integer weights repeat samples, also in DIST's columns.
    "dist": (
        lambda: losses.CorrelationKD(),
        lambda s, t, y, w: w.sum() / len(w) * ref_dist(
            np.repeat(s, w.astype(int), 0), np.repeat(t, w.astype(int), 0)),
    ),
    "dist_beta_gamma_t4": (
        lambda: losses.CorrelationKD(beta=2.0, gamma=0.5, temperature=4.0),
        lambda s, t, y, w: w.sum() / len(w) * ref_dist(
            np.repeat(s, w.astype(int), 0), np.repeat(t, w.astype(int), 0),
            2.0, 0.5, 4.0),
    ),
    "kl_standardized": (
        lambda: losses.KLDivergence(2.0, standardize=True),
        lambda s, t, y, w: keras_reduction(ref_kd_standardized(s, t, 2.0), w),
    ),
    "soft_targets_standardized": (
        lambda: losses.SoftTargets(1.0, standardize=True),
        lambda s, t, y, w: keras_reduction(
            ref_soft_targets_standardized(s, t, 1.0), w),
    ),
}


@pytest.mark.parametrize("classes", [2, 100])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("case", sorted(EXACTNESS_CASES))
def test_new_losses_match_the_authors_code_on_random_batches(
    case, batch, classes
):
    make_loss, expected_loss = EXACTNESS_CASES[case]
    teacher, student, labels, weights = random_batch(
        batch, classes, seed=batch * 1000 + classes
    )
    expected = expected_loss(student.astype("float64"),
                             teacher.astype("float64"), labels, weights)
    got = through_distiller(make_loss(), teacher, student, labels, weights)
    # A float32 value below float32's smallest normal number (~1e-38) has
    # no relative precision: NKD's target term of a 2-class sample whose
    # teacher gives the label e^-90 (logits ±50) is such a value. Two
    # classes standardize to (±1/√2, ∓1/√2): a teacher and a student that
    # agree give a KL of 0, in float32 a rounding error of about 1e-7.
    atol = 1e-6 if "standardized" in case and classes == 2 else 1e-35
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=atol)
    assert expected > 1e-3 or batch == 1


def test_dkd_splits_kl_as_the_paper_says():
    # Zhao et al., eq. 1: KD = TCKD + (1 - p_y) · NCKD, all at T, times T².
    teacher, student, labels, _ = random_batch(32, 10, seed=1)
    teacher, student = teacher / 10, student / 10
    one_hot = np.eye(10, dtype="float32")[labels]
    tckd = losses.DecoupledKD(alpha=1.0, beta=0.0).call(
        teacher, student, labels=one_hot)
    nckd = losses.DecoupledKD(alpha=0.0, beta=1.0).call(
        teacher, student, labels=one_hot)
    p_target = np_softmax(teacher, 4.0)[np.arange(32), labels]
    kd = per_sample(losses.KLDivergence(4.0), teacher, student)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(tckd)
        + (1 - p_target) * keras.ops.convert_to_numpy(nckd),
        kd, rtol=1e-4,
    )
    assert np.all(keras.ops.convert_to_numpy(nckd) > 1e-3)


# Probabilities made of simple fractions, as logits (log p): the examples
# below are computed by hand from these.
P_TEACHER = np.log(np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], "float32"))
P_STUDENT = np.log(np.array([[0.25, 0.25, 0.5], [0.6, 0.2, 0.2]], "float32"))


def test_dkd_by_hand():
    # Sample 1, label 0: p = (.5, .3, .2), q = (.25, .25, .5).
    #   TCKD = .5 ln(.5/.25) + .5 ln(.5/.75)
    #   NCKD over p̂ = (.6, .4), q̂ = (1/3, 2/3) = .6 ln 1.8 + .4 ln .6
    tckd = 0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0)
    nckd = 0.6 * np.log(1.8) + 0.4 * np.log(0.6)
    loss = losses.DecoupledKD(alpha=1.0, beta=8.0, temperature=1.0)
    got = loss.call(P_TEACHER[:1], P_STUDENT[:1], labels=[[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                               [tckd + 8.0 * nckd], rtol=1e-5)


def test_nkd_by_hand():
    # Sample 1, label 0: -p_y ln q_y = -.5 ln .25; the non-target
    # crossentropy of p̂ = (.6, .4) to q̂ = (1/3, 2/3), times γ = 1.5.
    expected = (-0.5 * np.log(0.25)
                - 1.5 * (0.6 * np.log(1 / 3) + 0.4 * np.log(2 / 3)))
    got = losses.NormalizedKD().call(P_TEACHER[:1], P_STUDENT[:1],
                                     labels=[[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), [expected],
                               rtol=1e-5)


def test_dist_by_hand():
    # Rows: centered t = (1/6, -1/30, -2/15), s = (-1/12, -1/12, 1/6) give
    # ρ = (-1/30) / sqrt(42/900 · 1/24) = -2/√7; the second pair is
    # (-2, -2, 4)/15 and (4, -2, -2)/15, so ρ = -1/2. Columns over two
    # samples correlate ±1: (.5, .2) vs (.25, .6) -1, (.3, .2) vs
    # (.25, .2) +1, (.2, .6) vs (.5, .2) -1, so intra = 1 + 1/3.
    inter = 1.0 - (-2.0 / np.sqrt(7.0) - 0.5) / 2.0
    intra = 4.0 / 3.0
    loss = losses.CorrelationKD()
    values = keras.ops.convert_to_numpy(loss.call(P_TEACHER, P_STUDENT))
    np.testing.assert_allclose(values.mean(), inter + intra, rtol=1e-5)
    np.testing.assert_allclose(
        values, [1.0 + 2.0 / np.sqrt(7.0) + intra, 1.5 + intra], rtol=1e-5
    )


def test_standardized_kl_by_hand():
    # (1, 2, 3) has mean 2 and unbiased std 1: z-scores (-1, 0, 1);
    # (10, 0, 20): mean 10, std 10, z-scores (0, -1, 1).
    teacher = np.array([[1.0, 2.0, 3.0]], "float32")
    student = np.array([[10.0, 0.0, 20.0]], "float32")
    e = np.e
    p = np.array([1 / e, 1.0, e]) / (1 / e + 1 + e)
    q = np.array([1.0, 1 / e, e]) / (1 / e + 1 + e)
    expected = (p * np.log(p / q)).sum()
    loss = losses.KLDivergence(temperature=1.0, standardize=True)
    np.testing.assert_allclose(float(loss(teacher, student)), expected,
                               rtol=1e-5)
    # The biased std (√(2/3) of the unbiased one) would give another value.
    scale = np.sqrt(1.5)
    p_b = np_softmax(np.array([-1.0, 0.0, 1.0]) * scale)
    q_b = np_softmax(np.array([0.0, -1.0, 1.0]) * scale)
    assert abs((p_b * np.log(p_b / q_b)).sum() - expected) > 1e-2


@pytest.mark.parametrize("classes", [1, 2, 100])
@pytest.mark.parametrize(
    "make_loss",
    [losses.DecoupledKD, lambda: losses.DecoupledKD(temperature=1.0),
     losses.NormalizedKD, lambda: losses.NormalizedKD(temperature=4.0),
     losses.CorrelationKD, lambda: losses.KLDivergence(standardize=True),
     lambda: losses.SoftTargets(standardize=True)],
)
def test_new_losses_and_gradients_stay_finite_at_extreme_logits(
    make_loss, classes
):
    import tensorflow as tf

    loss = make_loss()
    rng = np.random.default_rng(6)
    for scale in (50.0, 1000.0, 0.0):
        teacher = (rng.choice([-1.0, 1.0], (64, classes)) * scale
                   ).astype("float32")
        student = tf.Variable(-teacher)
        labels = np.eye(max(classes, 2), dtype="float32")[
            rng.integers(0, max(classes, 2), 64)][:, :classes]
        kwargs = {"labels": labels} if loss.uses_labels else {}
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss.call(teacher, student, **kwargs))
        gradient = tape.gradient(value, student).numpy()
        assert np.isfinite(float(value)), scale
        assert np.all(np.isfinite(gradient)), scale


def test_standardization_ignores_each_sides_shift_and_scale():
    teacher, student, _, _ = random_batch(16, 10, seed=2)
    loss = losses.KLDivergence(2.0, standardize=True)
    base = per_sample(loss, teacher, student)
    moved = per_sample(loss, teacher * 0.1 - 7.0, student * 3.0 + 2.0)
    np.testing.assert_allclose(moved, base, rtol=1e-4)
    plain = per_sample(losses.KLDivergence(2.0), teacher * 0.1, student)
    assert not np.allclose(plain, base, rtol=1e-2)


def test_standardized_logits_have_a_finite_gradient_when_equal():
    import tensorflow as tf

    student = tf.Variable(np.zeros((2, 5), "float32"))
    with tf.GradientTape() as tape:
        value = losses.KLDivergence(standardize=True)(TEACHER[:2], student)
    gradient = tape.gradient(value, student).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(gradient))


@pytest.mark.parametrize(
    "make_loss",
    [lambda: losses.DecoupledKD(temperature=2.0), losses.NormalizedKD,
     losses.CorrelationKD, lambda: losses.KLDivergence(2.0, standardize=True),
     lambda: losses.SoftTargets(3.0, standardize=True)],
)
def test_a_single_unit_is_the_two_logits_z_and_0(make_loss):
    rng = np.random.default_rng(3)
    logit_t = rng.normal(scale=4.0, size=(8, 1)).astype("float32")
    logit_s = rng.normal(scale=4.0, size=(8, 1)).astype("float32")
    binary = (rng.random((8, 1)) > 0.5).astype("float32")
    two = lambda z: np.concatenate([z, np.zeros_like(z)], -1)  # noqa: E731
    loss = make_loss()
    kwargs = {"labels": binary} if loss.uses_labels else {}
    kwargs_two = ({"labels": np.concatenate([binary, 1 - binary], -1)}
                  if loss.uses_labels else {})
    got = keras.ops.convert_to_numpy(loss.call(logit_t, logit_s, **kwargs))
    expected = keras.ops.convert_to_numpy(
        loss.call(two(logit_t), two(logit_s), **kwargs_two)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_target_class_is_the_largest_label_entry():
    smoothed = np.full((6, 5), 0.025, "float32")
    labels = RNG.integers(0, 5, 6)
    smoothed[np.arange(6), labels] = 0.9
    one_hot = np.eye(5, dtype="float32")[labels]
    for loss in (losses.DecoupledKD(), losses.NormalizedKD()):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(
                loss.call(TEACHER, STUDENT, labels=smoothed)),
            keras.ops.convert_to_numpy(
                loss.call(TEACHER, STUDENT, labels=one_hot)),
        )


def test_dist_leaves_zero_weight_samples_out_of_the_columns():
    teacher, student, _, _ = random_batch(12, 6, seed=4)
    teacher, student = teacher / 10, student / 10
    weights = np.ones(12, "float32")
    weights[:4] = 0.0
    loss = losses.CorrelationKD()
    value = float(loss(teacher, student, sample_weight=weights))
    other = student.copy()
    other[:4] = RNG.normal(size=(4, 6))
    assert float(loss(teacher, other, sample_weight=weights)) == pytest.approx(
        value, rel=1e-6)
    # Only the 8 weighted samples, scaled by their share of the batch.
    np.testing.assert_allclose(
        value, 8 / 12 * ref_dist(student[4:], teacher[4:]), rtol=1e-5
    )
    # Unweighted, the same 4 samples would change the columns.
    unweighted = float(loss(teacher, other)) - float(loss(teacher, student))
    assert abs(unweighted) > 1e-3


def test_dist_of_a_batch_is_not_the_mean_over_its_halves():
    # The intra-class term correlates the columns over the whole batch:
    # what a replica of half the batch would compute alone differs.
    teacher, student, _, _ = random_batch(16, 6, seed=5)
    teacher, student = teacher / 10, student / 10
    loss = losses.CorrelationKD()
    whole = float(loss(teacher, student))
    halves = (float(loss(teacher[:8], student[:8]))
              + float(loss(teacher[8:], student[8:]))) / 2
    np.testing.assert_allclose(whole, ref_dist(student, teacher), rtol=1e-5)
    assert abs(whole - halves) > 1e-3


def test_new_losses_declare_what_they_need():
    assert losses.DecoupledKD().uses_labels
    assert losses.NormalizedKD().uses_labels
    assert not losses.CorrelationKD().uses_labels
    assert losses.CorrelationKD().uses_sample_weight
    assert not losses.KLDivergence().uses_sample_weight


def test_new_names_and_defaults():
    dkd, dist, nkd = losses.get("dkd"), losses.get("dist"), losses.get("nkd")
    assert isinstance(dkd, losses.DecoupledKD)
    assert (dkd.alpha, dkd.beta, dkd.temperature) == (1.0, 8.0, 4.0)
    assert isinstance(dist, losses.CorrelationKD)
    assert (dist.beta, dist.gamma, dist.temperature) == (1.0, 1.0, 1.0)
    assert isinstance(nkd, losses.NormalizedKD)
    assert (nkd.gamma, nkd.temperature) == (1.5, 1.0)
    assert losses.get("dkd", temperature=2.0).temperature == 2.0
    assert losses.get("kl", standardize=True).standardize
    assert not losses.get("kl").standardize


@pytest.mark.parametrize(
    "make_loss, argument",
    [(lambda: losses.DecoupledKD(alpha=-1.0), "alpha"),
     (lambda: losses.DecoupledKD(beta=float("nan")), "beta"),
     (lambda: losses.NormalizedKD(gamma=-0.5), "gamma"),
     (lambda: losses.CorrelationKD(gamma=float("inf")), "gamma"),
     (lambda: losses.CorrelationKD(temperature=0.0), "temperature"),
     (lambda: losses.KLDivergence(standardize="yes"), "standardize")],
)
def test_bad_arguments_of_the_new_losses(make_loss, argument):
    with pytest.raises(ValueError, match=argument):
        make_loss()


@pytest.mark.parametrize(
    "loss",
    [losses.DecoupledKD(alpha=0.5, beta=2.0, temperature=3.0),
     losses.NormalizedKD(gamma=1.0, temperature=2.0),
     losses.CorrelationKD(beta=2.0, gamma=0.5, temperature=4.0),
     losses.KLDivergence(2.0, standardize=True),
     losses.SoftTargets(1.0, standardize=True)],
)
def test_new_losses_serialize_round_trip(loss):
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    kwargs = ({"labels": np.eye(5, dtype="float32")[[0, 1, 2, 3, 4, 0]]}
              if loss.uses_labels else {})
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored.call(TEACHER, STUDENT, **kwargs)),
        keras.ops.convert_to_numpy(loss.call(TEACHER, STUDENT, **kwargs)),
    )
