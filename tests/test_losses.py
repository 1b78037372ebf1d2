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
