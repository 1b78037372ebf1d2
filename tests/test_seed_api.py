"""The seed report's listings, with only the imports changed."""

import keras
import numpy as np
import pytest

import kdtrain
from kdtrain import losses
from kdtrain.seed_api import BANEnsemble
from kdtrain.seed_api import ban
from kdtrain.seed_api import distil_knowledge
from kdtrain.seed_api import distillation_loss_for
from conftest import mlp


def build_model(activation="softmax", hidden=16):
    return mlp(hidden, activation=activation, seed=None)


def one_hot(y):
    return np.eye(10, dtype="float32")[y]


@pytest.fixture(scope="module")
def data(digits):
    x, y = digits
    return (x[:1400], one_hot(y[:1400])), (x[1400:], one_hot(y[1400:]))


def test_distil_knowledge_listing_3(data, trained_teacher):
    (x, y), (x_valid, y_valid) = data
    teacher_weights = [w.copy() for w in trained_teacher.get_weights()]
    trainable = trained_teacher.trainable
    student = build_model()
    student.compile(optimizer=keras.optimizers.Adam(0.01),
                    loss="categorical_crossentropy", metrics=["accuracy"])
    history = distil_knowledge(
        trained_teacher, student, (x, y),
        dict(epochs=3, batch_size=64, validation_data=(x_valid, y_valid),
             verbose=0),
        ground_truth_weight=0.2,
    )
    assert isinstance(history, keras.callbacks.History)
    assert len(history.history["distillation_loss"]) == 3
    assert history.history["accuracy"][-1] > 0.5
    # The student keeps its own compile settings: it evaluates on labels.
    logs = student.evaluate(x_valid, y_valid, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["accuracy"], history.history["val_accuracy"][-1], atol=1e-6
    )
    assert trained_teacher.trainable == trainable
    for before, after in zip(teacher_weights, trained_teacher.get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_distil_knowledge_checks_the_weight(trained_teacher, weight):
    with pytest.raises(ValueError, match="ground_truth_weight"):
        distil_knowledge(trained_teacher, build_model(), None, {},
                         ground_truth_weight=weight)


def test_ban_listings_4_5_7_8_9(data, trained_teacher):
    (x, y), (x_valid, y_valid) = data
    student_callback = keras.callbacks.EarlyStopping(
        patience=12, restore_best_weights=True
    )
    fit_args = dict(
        epochs=2, batch_size=64, validation_data=(x_valid, y_valid),
        callbacks=[student_callback], verbose=0,
    )
    compile_args = dict(optimizer=keras.optimizers.Adam(0.01),
                        loss="categorical_crossentropy", metrics=["accuracy"])
    history, students = ban(trained_teacher, 2, build_model, (x, y),
                            fit_args, compile_args=compile_args)
    assert len(history) == 2 and len(students) == 3
    assert students[0] is trained_teacher
    assert all(isinstance(h, keras.callbacks.History) for h in history)
    assert len(history[1].history["val_loss"]) == 2
    assert student_callback.model is None  # Copied, never used itself.
    assert fit_args["callbacks"] == [student_callback]  # Not appended to.
    for student in students:  # Listing 9.
        logs = student.evaluate(x_valid, y_valid, verbose=0,
                                return_dict=True)
        assert logs["accuracy"] > 0.3
    ensemble = BANEnsemble(students)  # Listing 8.
    ensemble.compile(loss="categorical_crossentropy", optimizer="adam",
                     metrics=["accuracy"])
    logs = ensemble.evaluate(x_valid, y_valid, verbose=0, return_dict=True)
    average = np.mean([s.predict(x_valid, verbose=0) for s in students], 0)
    np.testing.assert_allclose(
        logs["accuracy"],
        (average.argmax(-1) == y_valid.argmax(-1)).mean(), atol=1e-6,
    )
    assert isinstance(ensemble, kdtrain.ensemble.GenerationEnsemble)
    assert ensemble.students == students


def test_ban_with_checkpoints_resumes(data, trained_teacher, tmp_path):
    (x, y), _ = data
    fit_args = dict(epochs=1, batch_size=128, verbose=0)
    _, students = ban(trained_teacher, 1, build_model, (x, y), fit_args,
                      checkpoints=tmp_path / "chain")
    saved = tmp_path / "chain" / "gen-1" / "model.keras"
    mtime = saved.stat().st_mtime_ns
    _, again = ban(trained_teacher, 1, build_model, (x, y), fit_args,
                   checkpoints=tmp_path / "chain")
    assert saved.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(
        again[1].predict(x[:20], verbose=0),
        students[1].predict(x[:20], verbose=0), rtol=1e-6,
    )


def test_ban_on_logits_with_mse_listing_12(data, trained_teacher):
    (x, y), _ = data
    teacher_logits = build_model(activation=None, hidden=64)
    teacher_logits.set_weights(trained_teacher.get_weights())
    compile_args = dict(optimizer="adam", loss="mse")
    history, students = ban(
        teacher_logits, 1, lambda: build_model(activation=None), (x, y),
        fit_args=dict(epochs=2, batch_size=64, verbose=0),
        compile_args=compile_args,
    )
    assert history[0].history["distillation_loss"][1] < (
        history[0].history["distillation_loss"][0]
    )
    assert students[1].loss == "mse"


def test_ban_positional_arguments_of_listing_7(data, trained_teacher):
    (x, y), (x_valid, y_valid) = data
    with pytest.raises(TypeError, match="Listing 7"):
        ban(trained_teacher, 3, build_model, (x, y), (x_valid, y_valid),
            [keras.callbacks.EarlyStopping()], 100, 32)


def test_distillation_loss_for_keras_losses():
    assert isinstance(distillation_loss_for(None), losses.SoftTargets)
    assert isinstance(distillation_loss_for("categorical_crossentropy"),
                      losses.SoftTargets)
    assert isinstance(
        distillation_loss_for(keras.losses.CategoricalCrossentropy()),
        losses.SoftTargets,
    )
    assert isinstance(distillation_loss_for("mse"), losses.LogitsMSE)
    assert isinstance(distillation_loss_for(keras.losses.mean_squared_error),
                      losses.LogitsMSE)
    kl = distillation_loss_for("kl_divergence")
    assert isinstance(kl, losses.KLDivergence) and kl.temperature == 1.0
    dkpp = losses.PermutedPredictions()
    assert distillation_loss_for(dkpp) is dkpp
    with pytest.raises(ValueError, match="hinge"):
        distillation_loss_for("hinge")


def test_ban_ensemble_round_trips(data, trained_teacher, tmp_path):
    (x, _), _ = data
    ensemble = BANEnsemble([trained_teacher, build_model()])
    path = tmp_path / "ban.keras"
    ensemble.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BANEnsemble)
    np.testing.assert_allclose(
        loaded.predict(x[:20], verbose=0),
        ensemble.predict(x[:20], verbose=0), rtol=1e-6,
    )
