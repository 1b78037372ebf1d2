import hashlib
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdtrain
from conftest import tensorboard_events
from conftest import HANG_GUARD
from kdtrain import losses
from kdtrain.ensemble import GenerationEnsemble
from kdtrain.chain import ConfigurationMismatch
from kdtrain.chain import RunDirectoryError
from kdtrain.chain import GenerationRunner
from kdtrain.chain import TrainingDiverged
from conftest import mlp

HERE = os.path.dirname(os.path.abspath(__file__))


def build_model(hidden=16, activation=None):
    return mlp(hidden, activation=activation, seed=None)


def adam():
    return keras.optimizers.Adam(0.01)


def split(digits):
    x, y = digits
    return (x[:1300], y[:1300]), (x[1300:1550], y[1300:1550]), (
        x[1550:], y[1550:]
    )


def make_runner(directory, **kwargs):
    options = dict(
        generations=2,
        optimizer=adam,
        directory=directory,
        seed=0,
        progress=False,
        verbose=0,
    )
    options.update(kwargs)
    return GenerationRunner(build_model, **options)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class EpochSpy(keras.callbacks.Callback):
    """Records (generation, epoch) in a list shared by all its copies."""

    calls = []

    def __init__(self, generation=None):
        super().__init__()
        self.generation = generation

    def on_epoch_begin(self, epoch, logs=None):
        EpochSpy.calls.append((self.generation, epoch))


@pytest.fixture(scope="module")
def chain(digits, tmp_path_factory):
    train, validation, test = split(digits)
    directory = tmp_path_factory.mktemp("chain") / "run"
    result = make_runner(directory).run(
        train, validation_data=validation, test_data=test, epochs=2,
        batch_size=64,
    )
    return SimpleNamespace(
        result=result, directory=directory, train=train,
        validation=validation, test=test,
    )


# A chain with a directory -----------------------------------------------------


def test_chain_writes_a_checkpoint_per_generation(chain):
    directory = chain.directory
    for k in range(3):
        model = directory / f"gen-{k}" / "model.keras"
        assert model.is_file()
        assert not (directory / f"gen-{k}" / "backup").exists()
        assert not (directory / f"gen-{k}" / "cache").exists()
        record = json.loads((directory / f"gen-{k}" / "record.json").read_text())
        assert record["epochs"] == 2 and len(record["history"]["loss"]) == 2
        assert record["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert record["taught_by"] == (None if k == 0 else {
            "generation": k - 1, "name": "teacher" if k == 1 else f"gen-{k - 1}",
            "sha256": hashlib.sha256(
                (directory / f"gen-{k - 1}" / "model.keras").read_bytes()
            ).hexdigest(),
        })
    assert not [p for p in directory.rglob("*.tmp*")]
    results = json.loads((directory / "results.json").read_text())
    assert results["complete"] is True
    assert set(results["generations"]) == {"teacher", "gen-1", "gen-2"}
    record = results["generations"]["gen-1"]
    assert record["generation"] == 1 and record["path"] == "gen-1/model.keras"
    assert record["epochs"] == 2
    assert set(record["history"]) >= {
        "loss", "distillation_loss", "ground_truth_loss", "accuracy",
        "val_loss", "val_accuracy",
    }
    assert record["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert results["config"]["generations"] == 2
    assert results["config"]["model"]["params"] == record["params"]
    assert results["table"] == chain.result.table


def test_saved_generations_are_the_trained_models(chain):
    x_test = chain.test[0]
    for k in (0, 1, 2):
        loaded = keras.saving.load_model(
            chain.directory / f"gen-{k}" / "model.keras"
        )
        np.testing.assert_allclose(
            loaded.predict(x_test, verbose=0),
            chain.result.models[k].predict(x_test, verbose=0),
            rtol=1e-5, atol=1e-6,
        )


def test_table_rows_and_markdown(chain):
    result = chain.result
    assert result.names == ["teacher", "gen-1", "gen-2"]
    names = ["teacher", "gen-1", "gen-2", "ensemble", "ensemble_with_teacher"]
    assert [(r["name"], r["split"]) for r in result.table] == [
        (name, split) for name in names for split in ("validation", "test")
    ]
    for row in result.table:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert np.isfinite(row["loss"]) and row["params"] > 0
        assert row["wall_time"] > 0
    assert result.row("teacher")["accuracy"] > 0.7
    assert result.row("ensemble")["params"] == 2 * result.row("gen-1")["params"]
    markdown = result.to_markdown().splitlines()
    assert markdown[0] == (
        "| Metrics | Teacher | BAN-1 | BAN-2 | Ensemble | Ensemble + teacher |"
    )
    assert markdown[2].startswith("| Accuracy | ")
    assert markdown[3].startswith("| Loss | ")
    assert f"{result.row('gen-2')['loss']:.4f}" in markdown[3]
    assert "validation" in result.splits


def test_ensemble_accuracy_is_the_hand_average(chain):
    x_test, y_test = chain.test
    models = chain.result.models
    probabilities = [softmax(m.predict(x_test, verbose=0)) for m in models]
    students = np.mean(probabilities[1:], axis=0)
    everyone = np.mean(probabilities, axis=0)
    for name, average in (("ensemble", students),
                          ("ensemble_with_teacher", everyone)):
        row = chain.result.row(name, "test")
        np.testing.assert_allclose(
            row["accuracy"], (average.argmax(-1) == y_test).mean(), atol=1e-6
        )
        crossentropy = -np.log(average[np.arange(len(y_test)), y_test]).mean()
        np.testing.assert_allclose(row["loss"], crossentropy, rtol=1e-4)
    np.testing.assert_allclose(
        chain.result.ensemble.predict(x_test, verbose=0), students, rtol=1e-5,
        atol=1e-6,
    )
    assert isinstance(chain.result.ensemble, GenerationEnsemble)
    assert chain.result.ensemble.models == models[1:]


def test_models_are_fresh_compiled_and_distinct(chain):
    models = chain.result.models
    assert len({id(m) for m in models}) == 3
    weights = [{id(v) for v in m.weights} for m in models]
    assert not (weights[0] & weights[1]) and not (weights[1] & weights[2])
    assert all(m.trainable for m in models)
    x_test, y_test = chain.test
    logs = models[2].evaluate(x_test, y_test, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["accuracy"], chain.result.row("gen-2", "test")["accuracy"],
        atol=1e-6,
    )


def test_chain_records_tensorboard_runs(chain):
    tensors = tensorboard_events

    logs = chain.directory / "logs"
    for k in range(3):
        train = tensors(logs / f"gen-{k}" / "train")
        steps = [event.step for event in train.Tensors("epoch_loss")]
        assert steps == [0, 1]
        validation = tensors(logs / f"gen-{k}" / "validation")
        assert len(validation.Tensors("epoch_accuracy")) == 2
    student = tensors(logs / "gen-1" / "train")
    assert len(student.Tensors("epoch_distillation_loss")) == 2
    summary = tensors(logs / "summary")
    events = summary.Tensors("test/accuracy")
    assert sorted(event.step for event in events) == [0, 1, 2]
    for event in events:
        value = float(tf.make_ndarray(event.tensor_proto))
        name = "teacher" if event.step == 0 else f"gen-{event.step}"
        np.testing.assert_allclose(
            value, chain.result.row(name, "test")["accuracy"], rtol=1e-6
        )
    assert summary.Tensors("test/ensemble/accuracy")
    plugins = summary.PluginTagToContent("hparams")
    assert plugins  # The HParams plugin's session and experiment data.


def test_rerun_loads_finished_generations(chain):
    model_file = chain.directory / "gen-1" / "model.keras"
    before = (model_file.stat().st_mtime_ns, model_file.read_bytes())
    EpochSpy.calls = []
    result = make_runner(chain.directory).run(
        chain.train, validation_data=chain.validation, test_data=chain.test,
        epochs=2, batch_size=64, callbacks=[EpochSpy()],
    )
    assert EpochSpy.calls == []  # Nothing trained.
    assert (model_file.stat().st_mtime_ns, model_file.read_bytes()) == before
    for old, new in zip(chain.result.table, result.table):
        assert (old["name"], old["split"]) == (new["name"], new["split"])
        np.testing.assert_allclose(old["accuracy"], new["accuracy"], atol=1e-6)
        np.testing.assert_allclose(old["loss"], new["loss"], rtol=1e-5)
    assert result.histories["gen-1"].history == (
        chain.result.histories["gen-1"].history
    )


def test_changed_configuration_is_refused(chain):
    results = chain.directory / "results.json"
    before = results.read_bytes()
    model_file = chain.directory / "gen-2" / "model.keras"
    mtime = model_file.stat().st_mtime_ns
    with pytest.raises(ConfigurationMismatch) as error:
        make_runner(chain.directory, generations=3,
                    ground_truth_weight=0.5).run(
            chain.train, validation_data=chain.validation,
            test_data=chain.test, epochs=2, batch_size=64,
        )
    message = str(error.value)
    assert "generations: 2 in the directory, 3 now" in message
    assert "ground_truth_weight: 0.0 in the directory, 0.5 now" in message
    assert "overwrite=True" in message
    with pytest.raises(ConfigurationMismatch, match="epochs"):
        make_runner(chain.directory).run(
            chain.train, validation_data=chain.validation,
            test_data=chain.test, epochs=3, batch_size=64,
        )
    assert results.read_bytes() == before
    assert model_file.stat().st_mtime_ns == mtime


def test_overwrite_clears_a_directory_of_another_configuration(
    digits, trained_teacher, tmp_path
):
    train, _, test = split(digits)
    runner = make_runner(tmp_path, generations=1, teacher=trained_teacher)
    runner.run(train, epochs=1, batch_size=128)
    assert (tmp_path / "gen-1" / "model.keras").exists()
    other = make_runner(
        tmp_path, generations=1, teacher=trained_teacher, overwrite=True,
        tensorboard=False,
    )
    result = other.run(train, test_data=test, epochs=1, batch_size=128)
    config = json.loads((tmp_path / "results.json").read_text())["config"]
    assert config["data"]["test"]["x"] == [len(test[0]), 64]
    assert not (tmp_path / "logs").exists()
    assert result.splits == ["test"]


def test_unrelated_directory_contents_are_refused(digits, tmp_path):
    (tmp_path / "gen-1").mkdir()
    with pytest.raises(RunDirectoryError, match="did not write: gen-1"):
        make_runner(tmp_path).run(split(digits)[0], epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen-1"]


# Resume after SIGKILL ---------------------------------------------------------


def _run_script(args, timeout, fault=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KDTRAIN_FAULT", None)
    if fault:
        env["KDTRAIN_FAULT"] = fault
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "chain_script.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_chain_killed_during_generation_2_resumes(tmp_path):
    directory, log = tmp_path / "chain", tmp_path / "epochs.log"
    # Killed once generation 2's first epoch is backed up.
    killed = _run_script([str(directory), str(log)], timeout=HANG_GUARD,
                         fault="gen-2/backup.written@1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    first_run = log.read_text().split("\n")
    assert "2 0" in first_run and "2 1" not in first_run
    gen_1 = directory / "gen-1" / "model.keras"
    before = (gen_1.stat().st_mtime_ns, gen_1.read_bytes())
    assert not (directory / "gen-2" / "model.keras").exists()
    assert (directory / "gen-2" / "backup" / "epoch-0001").is_dir()
    log.write_text("")

    finished = _run_script([str(directory), str(log)], timeout=HANG_GUARD)
    assert finished.returncode == 0, finished.stderr[-3000:]
    # Generations 0 and 1 were loaded; generation 2 resumed at epoch 2.
    assert log.read_text().split() == ["2", "1", "2", "2"]
    assert (gen_1.stat().st_mtime_ns, gen_1.read_bytes()) == before
    results = json.loads((directory / "results.json").read_text())
    assert results["complete"] is True
    assert results["generations"]["gen-2"]["epochs"] == 3
    assert len(results["generations"]["gen-2"]["history"]["loss"]) == 3
    names = [row["name"] for row in results["table"]]
    assert names == ["teacher", "gen-1", "gen-2", "ensemble",
                     "ensemble_with_teacher"]
    assert "| Metrics | Teacher | BAN-1 | BAN-2 |" in finished.stdout
    assert not (directory / "gen-2" / "backup").exists()


# Without a directory, other teachers, data kinds ----------------------------


def test_no_directory_writes_nothing(digits, trained_teacher, tmp_path,
                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, _, test = split(digits)
    trainable = trained_teacher.trainable
    result = make_runner(None, generations=1, teacher=trained_teacher).run(
        train, test_data=test, epochs=1, batch_size=128
    )
    assert list(tmp_path.iterdir()) == []
    assert result.models[0] is trained_teacher
    assert result.histories["teacher"] is None
    assert trained_teacher.trainable == trainable  # Restored.
    assert [row["name"] for row in result.table] == [
        "teacher", "gen-1", "ensemble", "ensemble_with_teacher"
    ]
    # The teacher ends in a softmax, the students emit logits: both are
    # averaged as probabilities.
    x_test, y_test = test
    average = (
        trained_teacher.predict(x_test, verbose=0)
        + softmax(result.models[1].predict(x_test, verbose=0))
    ) / 2
    np.testing.assert_allclose(
        result.row("ensemble_with_teacher")["accuracy"],
        (average.argmax(-1) == y_test).mean(), atol=1e-6,
    )


def test_teach_from_teacher(digits, trained_teacher):
    runner = make_runner(None, teach_from="teacher", teacher=trained_teacher)
    models = ["teacher", "gen-1", "gen-2"]
    assert runner.teacher_source(2, models) == "teacher"
    assert make_runner(None).teacher_source(2, models) == "gen-1"
    with pytest.raises(ValueError, match="teach_from"):
        make_runner(None, teach_from="first")


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


def test_datasets_and_pydatasets(digits, trained_teacher):
    train, validation, test = split(digits)
    dataset = tf.data.Dataset.from_tensor_slices(train).batch(128)
    result = make_runner(
        None, generations=1, teacher=trained_teacher,
        distillation_loss="cwtm",
    ).run(
        dataset, validation_data=Batches(*validation, 100),
        test_data=tf.data.Dataset.from_tensor_slices(test).batch(100),
        epochs=1,
    )
    assert result.splits == ["validation", "test"]
    assert set(result.histories["gen-1"].history) >= {"loss", "val_accuracy"}


def test_unlabeled_data_with_a_given_teacher(digits, trained_teacher):
    x = digits[0][:512]
    result = make_runner(None, generations=1, teacher=trained_teacher).run(
        tf.data.Dataset.from_tensor_slices(x).batch(128), epochs=1,
        evaluate=False,
    )
    assert result.table == []
    assert "distillation_loss" in result.histories["gen-1"].history


# Callbacks are copied per generation -------------------------------------------


def test_user_callbacks_are_copied_per_generation(digits, trained_teacher):
    train, validation, _ = split(digits)
    stopper = keras.callbacks.EarlyStopping(
        patience=5, restore_best_weights=True, monitor="val_loss"
    )
    spy = EpochSpy("original")
    EpochSpy.calls = []
    copies = []

    class Capture(keras.callbacks.Callback):
        """Sees, through a reference, the EarlyStopping its generation used."""

        def on_train_end(self, logs=None):
            copies.append(
                (self.stopper, self.stopper.best_weights is not None,
                 self.stopper.model is self.model)
            )

    capture = Capture()
    capture.stopper = stopper
    make_runner(None, teacher=trained_teacher).run(
        train, validation_data=validation, epochs=2, batch_size=128,
        callbacks=[stopper, spy, capture], evaluate=False,
    )
    # Each generation saw its own copies, starting from scratch.
    assert EpochSpy.calls == [("original", 0), ("original", 1)] * 2
    assert len(copies) == 2
    assert len({id(c) for c, _, _ in copies} | {id(stopper)}) == 3
    # Each copy was the one its generation trained with, and kept state.
    assert all(has_best and same_model for _, has_best, same_model in copies)
    # The instances passed in were never used.
    assert stopper.best_weights is None and stopper.model is None
    assert spy.model is None
    # Different generations' best weights are different objects.
    assert copies[0][0].best_weights is not copies[1][0].best_weights


def test_callbacks_can_be_a_function_of_the_generation(digits,
                                                       trained_teacher):
    EpochSpy.calls = []
    make_runner(None, teacher=trained_teacher).run(
        split(digits)[0], epochs=1, batch_size=256, evaluate=False,
        callbacks=lambda generation: [EpochSpy(generation)],
    )
    assert EpochSpy.calls == [(1, 0), (2, 0)]


def test_callbacks_that_cannot_be_copied(digits, trained_teacher):
    class Stubborn(keras.callbacks.Callback):
        def __deepcopy__(self, memo):
            raise TypeError("no copies")

    with pytest.raises(TypeError, match="function of the generation"):
        make_runner(None, teacher=trained_teacher).run(
            split(digits)[0], epochs=1, callbacks=[Stubborn()]
        )


# Divergence ----------------------------------------------------------------------


class Poison(keras.callbacks.Callback):
    """Sets the student's weights to NaN at the third step."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2:
            for weight in self.model.student.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, "float32"))


def test_nan_loss_stops_with_a_clear_error(digits, trained_teacher, tmp_path):
    runner = make_runner(tmp_path, teacher=trained_teacher, tensorboard=False)
    with pytest.raises(TrainingDiverged) as error:
        runner.run(
            split(digits)[0], epochs=2, batch_size=128,
            callbacks=lambda g: [Poison()] if g == 2 else [],
        )
    message = str(error.value)
    assert "Generation 2 (BAN-2) diverged" in message
    assert "epoch 1, step 3" in message
    assert str(tmp_path) in message
    assert error.value.generation == 2
    assert (tmp_path / "gen-1" / "model.keras").exists()
    assert not (tmp_path / "gen-2" / "model.keras").exists()
    assert (tmp_path / "gen-1" / "record.json").exists()
    assert not (tmp_path / "gen-2" / "record.json").exists()
    assert not (tmp_path / "results.json").exists()  # not finished


# Bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("generations", [0, -1, 1.5, True, None])
def test_bad_generations(generations):
    with pytest.raises(ValueError, match="generations"):
        GenerationRunner(build_model, generations=generations)


def test_build_model_must_be_a_function():
    with pytest.raises(ValueError, match="function"):
        GenerationRunner(build_model(), generations=1)


def test_unbuilt_teacher():
    teacher = keras.Sequential([keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not built"):
        GenerationRunner(build_model, teacher=teacher)


def test_build_model_returning_the_same_object(digits, tmp_path):
    model = build_model()
    runner = GenerationRunner(
        lambda: model, generations=2, directory=tmp_path, verbose=0,
        progress=False,
    )
    with pytest.raises(ValueError, match="twice"):
        runner.run(split(digits)[0], epochs=1)
    assert not (tmp_path / "gen-0").exists()  # Refused before training.


def test_build_model_sharing_weights(digits, trained_teacher):
    shared = keras.layers.Dense(16, activation="relu")

    def build():
        return keras.Sequential(
            [keras.Input((64,)), shared, keras.layers.Dense(10)]
        )

    runner = GenerationRunner(build, generations=1, teacher=trained_teacher,
                              verbose=0)
    with pytest.raises(ValueError, match="shares weights"):
        runner.run(split(digits)[0], epochs=1)


def test_output_shape_must_match_the_teacher(digits, trained_teacher):
    def build():
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(3)])

    runner = GenerationRunner(build, generations=1, teacher=trained_teacher,
                              verbose=0)
    with pytest.raises(ValueError, match=r"\(10,\).*\(3,\)"):
        runner.run(split(digits)[0], epochs=1)


@pytest.mark.parametrize(
    "options, reason",
    [
        ({}, "generation 0"),
        ({"teacher": True, "ground_truth_weight": 0.3}, "ground_truth_weight"),
        ({"teacher": True, "distillation_loss": "cwtm"}, "ConfidenceWeighted"),
    ],
)
def test_unlabeled_data_when_labels_are_needed(
    digits, trained_teacher, tmp_path, options, reason
):
    if options.get("teacher"):
        options = {**options, "teacher": trained_teacher}
    runner = make_runner(tmp_path, **options)
    with pytest.raises(ValueError, match=reason):
        runner.run(digits[0][:256], epochs=1)
    assert list(tmp_path.iterdir()) == []


def test_evaluation_data_needs_labels(digits, trained_teacher):
    runner = make_runner(None, teacher=trained_teacher)
    with pytest.raises(ValueError, match="test_data"):
        runner.run(split(digits)[0], test_data=digits[0][:10], epochs=1)


def test_generators_are_refused(digits, trained_teacher):
    runner = make_runner(None, teacher=trained_teacher)
    generator = (batch for batch in [digits])
    with pytest.raises(TypeError, match="generator"):
        runner.run(generator, epochs=1)


def test_reserved_fit_arguments(digits, trained_teacher):
    runner = make_runner(None, teacher=trained_teacher)
    with pytest.raises(ValueError, match="initial_epoch"):
        runner.run(split(digits)[0], epochs=1, initial_epoch=1)


# The Born-Again losses ---------------------------------------------------------


def test_dkpp_keeps_the_argmax_and_permutes_the_rest():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 6)).astype("float32") * 2
    p = softmax(logits)
    loss = losses.PermutedPredictions(seed=1)
    q = keras.ops.convert_to_numpy(loss.permute(keras.ops.convert_to_tensor(p)))
    rows = np.arange(len(p))
    top = p.argmax(-1)
    np.testing.assert_array_equal(q[rows, top], p[rows, top])
    np.testing.assert_array_equal(q.argmax(-1), top)
    np.testing.assert_allclose(np.sort(q, -1), np.sort(p, -1))
    # The other entries really move, and every position is reached.
    moved = (q != p).any(-1).mean()
    assert moved > 0.9
    ranks = np.argsort(np.argsort(-q, -1), -1)
    for position in range(6):
        others = top != position
        assert len(np.unique(ranks[others, position])) == 5
    # Fresh permutations at each call; a seed makes them reproducible.
    again = keras.ops.convert_to_numpy(loss.permute(p))
    assert (again != q).any()
    twin = losses.PermutedPredictions(seed=1)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(twin.permute(p)), q
    )


def test_dkpp_loss_is_the_crossentropy_to_the_permuted_teacher():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(8, 5)).astype("float32")
    student = rng.normal(size=(8, 5)).astype("float32")
    for temperature in (1.0, 3.0):
        loss = losses.get("dkpp", temperature=temperature, seed=4)
        twin = losses.PermutedPredictions(temperature, seed=4)
        permuted = keras.ops.convert_to_numpy(
            twin.permute(softmax(teacher / temperature))
        )
        expected = -(permuted * np.log(softmax(student / temperature))).sum(-1)
        values = keras.ops.convert_to_numpy(loss.call(teacher, student))
        np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert not loss.uses_labels
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, losses.PermutedPredictions)
    assert (restored.temperature, restored.seed) == (3.0, 4)


def test_dkpp_with_a_single_unit_is_soft_targets():
    teacher = np.array([[2.0], [-1.0]], "float32")
    student = np.array([[0.5], [0.3]], "float32")
    np.testing.assert_allclose(
        losses.PermutedPredictions().call(teacher, student),
        losses.SoftTargets().call(teacher, student), rtol=1e-6,
    )


def test_cwtm_weights_sum_as_specified():
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(16, 4)).astype("float32") * 2
    student = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 4, 16)
    labels = np.eye(4, dtype="float32")[y]
    loss = losses.get("cwtm")
    assert loss.uses_labels
    values = keras.ops.convert_to_numpy(loss.call(teacher, student, labels))
    rows = np.arange(16)
    # The teacher's max probability (CWTM: Confidence-Weighted by Teacher
    # Max), not its probability of the label: they differ where it errs.
    confidence = softmax(teacher).max(axis=-1)
    assert not np.allclose(confidence, softmax(teacher)[rows, y])
    w = confidence / confidence.sum()
    crossentropy = -np.log(softmax(student)[rows, y])
    np.testing.assert_allclose(values, 16 * w * crossentropy, rtol=1e-5)
    np.testing.assert_allclose((values / crossentropy).sum(), 16, rtol=1e-5)
    np.testing.assert_allclose(values.mean(), (w * crossentropy).sum(),
                               rtol=1e-5)
    # Binary, single unit: labels are (batch, 1) 0/1 targets.
    t, s = teacher[:, :1], student[:, :1]
    b = (y % 2).astype("float32")[:, None]
    values = keras.ops.convert_to_numpy(loss.call(t, s, b))
    p_t = 1 / (1 + np.exp(-t[:, 0]))
    confidence = np.maximum(p_t, 1 - p_t)
    p_s = 1 / (1 + np.exp(-s[:, 0]))
    crossentropy = -np.log(np.where(b[:, 0] == 1, p_s, 1 - p_s))
    np.testing.assert_allclose(
        values, 16 * confidence / confidence.sum() * crossentropy, rtol=1e-5
    )


def test_cwtm_has_no_gradient_through_the_teacher():
    teacher = tf.Variable(np.random.randn(4, 3).astype("float32"))
    student = tf.Variable(np.random.randn(4, 3).astype("float32"))
    labels = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(
            losses.ConfidenceWeighted().call(teacher, student, labels)
        )
    gradient_teacher, gradient_student = tape.gradient(
        value, [teacher, student]
    )
    assert gradient_teacher is None
    assert np.abs(gradient_student.numpy()).sum() > 0


def test_ban_losses_are_registered():
    assert losses.ALIASES["cwtm"] is losses.ConfidenceWeighted
    assert losses.ALIASES["dkpp"] is losses.PermutedPredictions
    assert {"ConfidenceWeighted", "PermutedPredictions"} <= set(losses.__all__)
    with pytest.raises(ValueError, match="temperature"):
        losses.get("cwtm", temperature=2.0)
    with pytest.raises(ValueError, match="seed"):
        losses.PermutedPredictions(seed="x")


def test_a_resume_with_other_callbacks_is_refused(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x[:128] / 16).astype("float32"), y[:128]

    def build_model():
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])

    def run(patience):
        runner = kdtrain.GenerationRunner(
            build_model, generations=1, directory=tmp_path, seed=0,
            progress=False, tensorboard=False, verbose=0,
        )
        return runner.run((x, y), epochs=1, batch_size=32, callbacks=[
            keras.callbacks.EarlyStopping(monitor="loss", patience=patience)
        ])

    run(3)
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(kdtrain.ConfigurationMismatch, match="patience"):
        run(5)
    assert (tmp_path / "results.json").read_bytes() == before


# Reusing the traced step across generations -----------------------------------


class _CountingDistiller(kdtrain.Distiller):
    traces = 0

    def train_step(self, data):
        _CountingDistiller.traces += 1
        return super().train_step(data)


def _run_three_generations(digits, monkeypatch, reuse):
    from kdtrain.chain import training

    monkeypatch.setattr(training, "Distiller", _CountingDistiller)
    if not reuse:
        monkeypatch.setattr(training.GenerationTrainer, "_reused_distiller",
                            lambda self, *args: None)
    _CountingDistiller.traces = 0
    train, validation, test = split(digits)
    result = make_runner(None, generations=3, cache_teacher=True).run(
        train, validation_data=validation, test_data=test, epochs=2,
        batch_size=64,
    )
    return result, _CountingDistiller.traces


def test_generations_reuse_one_traced_step_and_train_the_same(
    digits, monkeypatch
):
    reused, reused_traces = _run_three_generations(digits, monkeypatch, True)
    monkeypatch.undo()
    fresh, fresh_traces = _run_three_generations(digits, monkeypatch, False)
    # One trace for the three distilled generations instead of one each
    # (and never two: the optimizer and metrics are built before `fit`).
    assert (reused_traces, fresh_traces) == (1, 3)
    models = reused.models
    assert len({id(m) for m in models}) == len(models)  # distinct objects
    for name, a, b in zip(reused.names, models, fresh.models):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb, err_msg=name)
        assert reused.histories[name].history == fresh.histories[
            name].history, name
    x_test = split(digits)[2][0]
    for a, b in zip(models, fresh.models):
        np.testing.assert_array_equal(a.predict(x_test, verbose=0),
                                      b.predict(x_test, verbose=0))
    assert [{k: v for k, v in row.items() if k != "wall_time"}
            for row in reused.table] == [
        {k: v for k, v in row.items() if k != "wall_time"}
        for row in fresh.table]


def test_a_shuffled_test_dataset_scores_every_model_on_its_own_labels(
    digits
):
    # The dataset comes in a new order on every pass: each model must still
    # be scored against its samples' labels, and an ensemble must average
    # the rows of the same samples.
    train, validation, test = split(digits)
    x_test, y_test = test
    shuffled = tf.data.Dataset.from_tensor_slices(test).shuffle(
        len(y_test), seed=1, reshuffle_each_iteration=True).batch(50)
    result = make_runner(None, generations=2).run(
        train, test_data=shuffled, epochs=1, batch_size=64)
    for name, model in zip(result.names, result.models):
        expected = np.mean(np.argmax(model.predict(x_test, verbose=0), -1)
                           == y_test)
        assert result.row(name, "test")["accuracy"] == pytest.approx(
            expected, abs=1e-6), name
    mean = np.mean([softmax(m.predict(x_test, verbose=0))
                    for m in result.models[1:]], axis=0)
    assert result.row("ensemble", "test")["accuracy"] == pytest.approx(
        np.mean(np.argmax(mean, -1) == y_test), abs=1e-6)
