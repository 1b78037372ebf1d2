import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import HANG_GUARD
from conftest import mlp

import kdtrain
from kdtrain import losses


def np_log_softmax(z, t=1.0):
    z = z / t
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(teacher_logits, student_logits, t):
    log_p = np_log_softmax(teacher_logits, t)
    log_q = np_log_softmax(student_logits, t)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1) * t**2


def frozen_epoch(distiller, x, y=None, sample_weight=None, batch_size=100,
                 **compile_kwargs):
    """One epoch with a zero learning rate: logs of fixed weights."""
    compile_kwargs.setdefault("metrics", ["accuracy"])
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0), **compile_kwargs
    )
    history = distiller.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return {key: values[0] for key, values in history.history.items()}


def logits_of(model, x):
    """The model's pre-activation outputs (its last Dense, before softmax)."""
    dense = model.layers[-1]
    features = keras.Model(model.inputs, model.layers[-2].output)
    return features.predict(x, verbose=0) @ dense.kernel.numpy() + (
        dense.bias.numpy()
    )


# Losses through the Distiller ------------------------------------------------


def test_logged_losses_are_epoch_means_of_per_sample_losses(
    digits, trained_teacher
):
    x, y = digits
    student = mlp(16, seed=3)
    distiller = kdtrain.Distiller(student, trained_teacher)
    logs = frozen_epoch(
        distiller,
        x,
        y,
        distillation_loss=losses.KLDivergence(3.0),
        ground_truth_weight=0.25,
    )
    teacher_logits = logits_of(trained_teacher, x)
    student_logits = student.predict(x, verbose=0)
    kl = np_kl(teacher_logits, student_logits, 3.0).mean()
    crossentropy = -np_log_softmax(student_logits)[np.arange(len(y)), y].mean()
    # 1797 samples in batches of 100: a last-batch value would differ.
    np.testing.assert_allclose(logs["distillation_loss"], kl, rtol=1e-4)
    np.testing.assert_allclose(logs["ground_truth_loss"], crossentropy, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], 0.75 * kl + 0.25 * crossentropy, rtol=1e-4
    )
    accuracy = (student_logits.argmax(-1) == y).mean()
    np.testing.assert_allclose(logs["accuracy"], accuracy, atol=1e-6)


def test_softmax_teacher_gives_the_loss_of_its_logits(digits, trained_teacher):
    # keras.distillation divides a softmax teacher's probabilities by T as
    # if they were logits; the teacher's own logits make the temperature
    # exact.
    x, y = digits
    logits_teacher = keras.Sequential(
        [keras.Input((64,)), *trained_teacher.layers[:-1],
         keras.layers.Dense(10)]
    )
    logits_teacher.layers[-1].set_weights(trained_teacher.layers[-1].get_weights())
    np.testing.assert_allclose(
        logits_teacher.predict(x, verbose=0),
        logits_of(trained_teacher, x),
        rtol=1e-5,
        atol=1e-5,
    )
    student = mlp(16, seed=4)
    results = []
    for teacher in (trained_teacher, logits_teacher):
        distiller = kdtrain.Distiller(student, teacher)
        results.append(
            frozen_epoch(
                distiller, x, y, distillation_loss=losses.KLDivergence(4.0)
            )["distillation_loss"]
        )
    assert distiller.teacher_outputs == "logits"
    expected = np_kl(
        logits_of(trained_teacher, x), student.predict(x, verbose=0), 4.0
    ).mean()
    np.testing.assert_allclose(results, [expected, expected], rtol=1e-4)


def test_softmax_student_is_distilled_through_its_log_probabilities(
    digits, trained_teacher
):
    x, y = digits
    student = mlp(16, activation="softmax", seed=5)
    distiller = kdtrain.Distiller(student, trained_teacher)
    assert distiller.student_outputs == "probabilities"
    logs = frozen_epoch(
        distiller, x, y, distillation_loss=losses.SoftTargets(2.0)
    )
    p = np.exp(np_log_softmax(logits_of(trained_teacher, x), 2.0))
    log_q = np_log_softmax(logits_of(student, x), 2.0)
    np.testing.assert_allclose(
        logs["distillation_loss"], -(p * log_q).sum(-1).mean(), rtol=1e-4
    )


def test_sample_weights_weight_the_loss(digits, trained_teacher):
    x, y = digits
    weights = np.where(y < 5, 2.0, 0.0).astype("float32")
    student = mlp(16, seed=6)
    distiller = kdtrain.Distiller(student, trained_teacher)
    weighted = frozen_epoch(
        distiller, x, y, sample_weight=weights,
        distillation_loss=losses.KLDivergence(2.0), ground_truth_weight=0.5,
    )
    unweighted = frozen_epoch(
        distiller, x, y, distillation_loss=losses.KLDivergence(2.0),
        ground_truth_weight=0.5,
    )
    per_sample = np_kl(
        logits_of(trained_teacher, x), student.predict(x, verbose=0), 2.0
    )
    # Keras' reduction: sum(weight * loss) / number of samples.
    np.testing.assert_allclose(
        weighted["distillation_loss"],
        (weights * per_sample).sum() / len(x),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        unweighted["distillation_loss"], per_sample.mean(), rtol=1e-4
    )
    assert abs(weighted["loss"] - unweighted["loss"]) > 1e-3


def test_sample_weights_in_a_dataset_change_the_gradient(digits, trained_teacher):
    import tensorflow as tf

    x, y = digits
    x, y = x[:256], y[:256]
    results = []
    for weights in (np.ones(256), np.where(y < 5, 1.0, 0.0)):
        student = mlp(16, seed=7)
        distiller = kdtrain.Distiller(student, trained_teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5))
        data = tf.data.Dataset.from_tensor_slices(
            (x, y, weights.astype("float32"))
        ).batch(32)
        distiller.fit(data, epochs=1, verbose=0, shuffle=False)
        results.append(student.get_weights()[0])
    assert not np.allclose(results[0], results[1])


# Labels ---------------------------------------------------------------------


def test_one_hot_labels_match_integer_labels(digits, trained_teacher):
    x, y = digits
    student = mlp(16, seed=8)
    distiller = kdtrain.Distiller(student, trained_teacher)
    sparse = frozen_epoch(distiller, x, y, ground_truth_weight=0.5)
    one_hot = frozen_epoch(
        distiller, x, keras.utils.to_categorical(y, 10), ground_truth_weight=0.5
    )
    for key in ("loss", "ground_truth_loss", "distillation_loss", "accuracy"):
        np.testing.assert_allclose(sparse[key], one_hot[key], rtol=1e-5)


@pytest.mark.parametrize("head", [None, "sigmoid"])
def test_binary_labels_and_single_unit_outputs(digits, head):
    x, y = digits
    labels = (y >= 5).astype("float32")
    teacher = mlp(32, classes=1, activation=head, seed=9)
    teacher.compile(
        optimizer="adam",
        loss=keras.losses.BinaryCrossentropy(from_logits=head is None),
    )
    teacher.fit(x, labels, epochs=3, batch_size=64, verbose=0)
    student = mlp(8, classes=1, seed=10)
    distiller = kdtrain.Distiller(student, teacher)
    assert distiller.teacher_outputs == ("logits" if head is None else "probabilities")
    logs = frozen_epoch(
        distiller, x, labels, distillation_loss=losses.SoftTargets(2.0),
        ground_truth_weight=0.5,
    )
    t = logits_of(teacher, x)[:, 0] / 2.0
    s = student.predict(x, verbose=0)[:, 0]
    p = 1 / (1 + np.exp(-t))
    q = 1 / (1 + np.exp(-s / 2.0))
    soft = -(p * np.log(q) + (1 - p) * np.log(1 - q)).mean()
    q1 = 1 / (1 + np.exp(-s))
    bce = -(labels * np.log(q1) + (1 - labels) * np.log(1 - q1)).mean()
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=2e-4)
    np.testing.assert_allclose(logs["ground_truth_loss"], bce, rtol=2e-4)
    # "accuracy" sees the student's sigmoid, so logits threshold at 0.
    np.testing.assert_allclose(
        logs["accuracy"], ((s > 0) == labels).mean(), atol=1e-6
    )


def test_unlabeled_data_logs_only_the_losses(digits, trained_teacher):
    x, _ = digits
    student = mlp(16, seed=11)
    distiller = kdtrain.Distiller(student, trained_teacher)
    distiller.compile(optimizer="adam")
    history = distiller.fit(x, epochs=3, batch_size=64, verbose=0)
    assert set(history.history) == {"loss", "distillation_loss"}
    assert history.history["loss"][-1] < history.history["loss"][0]


# Training ---------------------------------------------------------------------


def test_distillation_loss_falls_and_accuracy_rises(digits, trained_teacher):
    x, y = digits
    student = mlp(32, seed=12)
    distiller = kdtrain.Distiller(student, trained_teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    history = distiller.fit(x, y, epochs=6, batch_size=64, verbose=0)
    loss = history.history["distillation_loss"]
    accuracy = history.history["accuracy"]
    assert loss[-1] < 0.5 * loss[0]
    assert accuracy[-1] > accuracy[0] + 0.3
    assert distiller.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] > 0.85


def test_teacher_weights_and_statistics_never_change(digits):
    x, y = digits
    keras.utils.set_random_seed(13)
    teacher = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10),
        ]
    )
    teacher.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, epochs=2, verbose=0)
    before = [w.copy() for w in teacher.get_weights()]  # incl. moving stats
    predictions = teacher.predict(x, verbose=0)
    distiller = kdtrain.Distiller(mlp(16, seed=14), teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    distiller.fit(x, y, epochs=2, batch_size=64, verbose=0)
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(predictions, teacher.predict(x, verbose=0))
    assert not teacher.trainable


class CountingTeacher(keras.Model):
    """A subclassed teacher that counts its calls (in eager mode)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def call(self, inputs, training=None):
        self.calls += 1
        return self.model(inputs, training=training)


def test_evaluate_is_the_bare_student_and_skips_the_teacher(
    digits, trained_teacher
):
    x, y = digits
    teacher = CountingTeacher(trained_teacher)
    teacher(x[:1])
    student = mlp(16, seed=15)
    distiller = kdtrain.Distiller(student, teacher, teacher_outputs="probabilities")
    distiller.compile(optimizer="adam", ground_truth_weight=0.3, run_eagerly=True)
    distiller.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    assert teacher.calls >= 4
    teacher.calls = 0
    weights = np.where(y % 2 == 0, 1.0, 0.5)
    result = distiller.evaluate(
        x, y, sample_weight=weights, verbose=0, return_dict=True
    )
    assert teacher.calls == 0
    student.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    bare = student.evaluate(x, y, sample_weight=weights, verbose=0,
                            return_dict=True)
    assert set(result) == {"loss", "accuracy"}
    np.testing.assert_allclose(result["loss"], bare["loss"], rtol=1e-5)
    np.testing.assert_allclose(result["accuracy"], bare["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(
        distiller.predict(x[:8], verbose=0), student.predict(x[:8], verbose=0)
    )


def test_validation_logs_are_the_students_ground_truth_loss(
    digits, trained_teacher
):
    x, y = digits
    student = mlp(16, seed=16)
    distiller = kdtrain.Distiller(student, trained_teacher)
    distiller.compile(optimizer="adam")
    history = distiller.fit(
        x[:512], y[:512], validation_data=(x[512:], y[512:]), epochs=1,
        batch_size=64, verbose=0,
    )
    logits = student.predict(x[512:], verbose=0)
    expected = -np_log_softmax(logits)[np.arange(len(x) - 512), y[512:]].mean()
    np.testing.assert_allclose(history.history["val_loss"][0], expected, rtol=1e-4)
    assert "val_distillation_loss" not in history.history


class CosineDistance(losses.DistillationLoss):
    def call(self, teacher_logits, student_logits):
        t = keras.ops.normalize(teacher_logits, axis=-1)
        s = keras.ops.normalize(student_logits, axis=-1)
        return 1.0 - keras.ops.sum(t * s, axis=-1)


class LabelMaskedMSE(losses.DistillationLoss):
    """Squared logit error on the true class only: needs the labels."""

    def call(self, teacher_logits, student_logits, labels):
        return keras.ops.sum(labels * (teacher_logits - student_logits) ** 2, -1)


def test_user_written_loss_trains_with_fit(digits, trained_teacher):
    x, y = digits
    student = mlp(16, seed=17)
    distiller = kdtrain.Distiller(student, trained_teacher)
    logs = frozen_epoch(distiller, x, y, distillation_loss=CosineDistance())
    # A softmax teacher's exact logits reach the loss, read from its graph.
    t = logits_of(trained_teacher, x)
    s = student.predict(x, verbose=0)
    cosine = (t * s).sum(-1) / np.linalg.norm(t, axis=-1) / np.linalg.norm(s, axis=-1)
    np.testing.assert_allclose(
        logs["distillation_loss"], (1 - cosine).mean(), rtol=1e-4
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01),
                      distillation_loss=CosineDistance())
    history = distiller.fit(x, y, epochs=4, batch_size=64, verbose=0)
    assert history.history["distillation_loss"][-1] < logs["distillation_loss"]


def test_a_loss_can_ask_for_the_labels(digits, trained_teacher):
    x, y = digits
    student = mlp(16, seed=18)
    distiller = kdtrain.Distiller(student, trained_teacher)
    logs = frozen_epoch(distiller, x, y, distillation_loss=LabelMaskedMSE())
    t = logits_of(trained_teacher, x)
    s = student.predict(x, verbose=0)
    expected = ((t - s)[np.arange(len(y)), y] ** 2).mean()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)
    distiller.compile(distillation_loss=LabelMaskedMSE())
    with pytest.raises(ValueError, match="needs labels"):
        distiller.fit(x, epochs=1, verbose=0)


def test_regularization_losses_are_added(digits, trained_teacher):
    x, y = digits
    keras.utils.set_random_seed(19)
    student = keras.Sequential(
        [keras.Input((64,)),
         keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(0.1))]
    )
    distiller = kdtrain.Distiller(student, trained_teacher)
    logs = frozen_epoch(distiller, x, y)
    penalty = 0.1 * (student.layers[0].kernel.numpy() ** 2).sum()
    np.testing.assert_allclose(
        logs["loss"], logs["distillation_loss"] + penalty, rtol=1e-4
    )


# Saving ---------------------------------------------------------------------


def test_saved_student_loads_without_kdtrain(digits, trained_teacher, tmp_path):
    x, y = digits
    student = mlp(16, seed=20)
    distiller = kdtrain.Distiller(student, trained_teacher)
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    np.save(tmp_path / "x.npy", x[:16])
    expected = student.predict(x[:16], verbose=0)
    script = (
        "import sys, numpy as np, keras\n"
        "assert 'kdtrain' not in sys.modules\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, "
        f"m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                   cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6)


def test_distiller_round_trips_through_a_keras_file(
    digits, trained_teacher, tmp_path
):
    x, y = digits
    distiller = kdtrain.Distiller(mlp(16, seed=21), trained_teacher)
    distiller.compile(
        optimizer="adam", distillation_loss=losses.KLDivergence(2.5),
        ground_truth_weight=0.2,
    )
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(restored, kdtrain.Distiller)
    assert restored.distillation_loss.temperature == 2.5
    assert restored.ground_truth_weight == 0.2
    np.testing.assert_allclose(
        restored.predict(x[:8], verbose=0), distiller.predict(x[:8], verbose=0),
        rtol=1e-6,
    )


# Bad input --------------------------------------------------------------------


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), float("inf"), True])
def test_bad_ground_truth_weight(trained_teacher, weight):
    distiller = kdtrain.Distiller(mlp(8), trained_teacher)
    with pytest.raises(ValueError, match="ground_truth_weight"):
        distiller.compile(ground_truth_weight=weight)


def test_unknown_loss_name(trained_teacher):
    distiller = kdtrain.Distiller(mlp(8), trained_teacher)
    with pytest.raises(ValueError, match="'soft_targets', 'kl', 'logits_mse'"):
        distiller.compile(distillation_loss="hinton")


def test_loss_argument_is_refused(trained_teacher):
    distiller = kdtrain.Distiller(mlp(8), trained_teacher)
    with pytest.raises(ValueError, match="distillation_loss"):
        distiller.compile(loss="mse")


def test_output_shapes_must_match_at_construction(trained_teacher):
    with pytest.raises(ValueError, match=r"teacher output shape=\(10,\).*\(5,\)"):
        kdtrain.Distiller(mlp(8, classes=5), trained_teacher)


class Subclassed(keras.Model):
    def __init__(self, classes):
        super().__init__()
        self.dense = keras.layers.Dense(classes)

    def call(self, inputs):
        return self.dense(inputs)


def test_output_shapes_checked_on_first_batch_when_unknown(digits, trained_teacher):
    x, y = digits
    student = Subclassed(5)
    distiller = kdtrain.Distiller(student, trained_teacher)
    distiller.compile()
    with pytest.raises(ValueError, match="same shape"):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_labels_that_cannot_fit_the_student(digits, trained_teacher):
    x, y = digits
    teacher = mlp(8, classes=5, seed=22)
    student = mlp(8, classes=5, seed=23)
    before = student.get_weights()
    distiller = kdtrain.Distiller(student, teacher)
    distiller.compile(ground_truth_weight=0.5)
    one_hot = keras.utils.to_categorical(y, 10)
    with pytest.raises(ValueError, match=r"\(None, 10\).*5 unit"):
        distiller.fit(x, one_hot, epochs=1, verbose=0)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_ground_truth_weight_needs_labels(digits, trained_teacher):
    x, _ = digits
    student = mlp(8, seed=24)
    before = student.get_weights()
    distiller = kdtrain.Distiller(student, trained_teacher)
    distiller.compile(ground_truth_weight=0.5)
    with pytest.raises(ValueError, match="no labels"):
        distiller.fit(x, epochs=1, verbose=0)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_evaluate_needs_labels(digits, trained_teacher):
    x, _ = digits
    distiller = kdtrain.Distiller(mlp(8), trained_teacher)
    distiller.compile()
    with pytest.raises(ValueError, match="labels"):
        distiller.evaluate(x, verbose=0)


def test_same_object_as_teacher_and_student(trained_teacher):
    with pytest.raises(ValueError, match="same object"):
        kdtrain.Distiller(trained_teacher, trained_teacher)


def test_student_sharing_the_teachers_weights(trained_teacher):
    shared = keras.Sequential([keras.Input((64,)), *trained_teacher.layers])
    with pytest.raises(ValueError, match="shares weights"):
        kdtrain.Distiller(shared, trained_teacher)


def test_unbuilt_teacher(trained_teacher):
    with pytest.raises(ValueError, match="not built"):
        kdtrain.Distiller(mlp(8), Subclassed(10))


def test_bad_output_kind(trained_teacher):
    with pytest.raises(ValueError, match="teacher_outputs.*'softmax'"):
        kdtrain.Distiller(mlp(8), trained_teacher, teacher_outputs="softmax")


def test_multi_label_sigmoid_head_is_refused(trained_teacher):
    with pytest.raises(ValueError, match="multi-label"):
        kdtrain.Distiller(mlp(8), mlp(8, activation="sigmoid"))


# Distribution -----------------------------------------------------------------


def test_mirrored_strategy_matches_one_device():
    """Two logical CPUs: same logged losses and weights as one device."""
    script = os.path.join(os.path.dirname(__file__), "distributed_check.py")
    result = subprocess.run(
        [sys.executable, script, "mirrored"],
        capture_output=True, text=True, timeout=HANG_GUARD,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    single, mirrored = report["single"], report["distributed"]
    assert set(single["history"]) == {
        "loss", "distillation_loss", "ground_truth_loss", "accuracy"
    }
    for key, values in single["history"].items():
        np.testing.assert_allclose(mirrored["history"][key], values, rtol=1e-4,
                                   err_msg=key)
    for a, b in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-6)
    # The weights moved: the check compares training, not initial weights.
    assert not np.allclose(single["weights"][0], report["initial"][0])


def test_fit_traces_the_training_step_once(digits):
    # Keras creates the optimizer's slots inside the first trace when no
    # strategy is set, which makes tf.function trace the step twice.
    traces = []

    class Counting(kdtrain.Distiller):
        def train_step(self, data):
            traces.append(1)
            return super().train_step(data)

    import tensorflow as tf

    x, y = digits
    distiller = Counting(mlp(seed=1), mlp(seed=2))
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x[:96], y[:96], batch_size=32, epochs=2, verbose=0)
    assert len(traces) == 1
    dataset = tf.data.Dataset.from_tensor_slices((x[:96], y[:96])).batch(32)
    again = Counting(mlp(seed=1), mlp(seed=2))
    again.compile(optimizer="adam", metrics=["accuracy"])
    again.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert len(traces) == 2
